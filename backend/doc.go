// Package backend is the example backend that Lookaside balances in its tests
// and demo: a gRPC server of the User service (proto/user/v1) and of the
// standard health service, which registers itself in Consul with a gRPC
// health check and leaves cleanly.
//
// It owns one instance's life cycle: listen (New), register and serve
// (Serve), report its health (SetServing), and drain on shutdown: health
// NOT_SERVING, deregister, wait DrainDelay so the balancers drop it from
// their lists, then a bounded graceful stop.
//
// Every response says which instance served it and with which lb-token, so
// tests can see where a balancer sent each call. The instance checks the
// lb-token of incoming calls with lbtoken.Verifier.
//
// The instance reports its load to balancers with ORCA: it serves
// loadreport's Reporter (OpenRcaService, at the interval each balancer asks
// for, at least ORCAMinInterval) fed by a loadreport.Recorder whose
// interceptor counts its calls. To let tests and the demo make an instance
// slow or busy, Latency (SetLatency) delays every User call and CPUBurn
// (SetCPUBurn) keeps a share of a core spinning; SetAppUtilization sets the
// application utilization it reports. All three can change while it serves.
//
// With Config.TLS it serves every service over TLS (mutual TLS with a
// client CA), the certificate reloaded by ReloadTLS and by polling its
// files (package tlsfiles); its Consul check then speaks TLS (see
// Config.CheckTLSVerify and Config.HealthWithoutClientCert).
package backend

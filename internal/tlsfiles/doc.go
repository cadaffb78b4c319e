// Package tlsfiles loads TLS material from PEM files, a certificate with its
// key and a bundle of CA certificates, and keeps it current while a process
// runs, so that certificates rotate without a restart.
//
// A Store owns the material of one role (the balancer's listener, the ORCA
// client, a backend's listener): New reads and checks the files once, and
// fails with an error that names the file at fault. Reload reads them again
// (the integrator calls it on SIGHUP); Run polls them every PollInterval and
// reloads when their content changed. A file that is missing, unparsable,
// expired, or half-written (a new certificate beside the old key) never
// replaces good material: the Store keeps serving the last good set, the
// poller logs the problem once per bad content, and the next good content
// is taken as soon as it is seen. Rotation therefore never causes an outage.
//
// The material in force is an immutable snapshot behind an atomic pointer;
// the tls.Configs the Store hands out read it at every handshake:
//
//   - ServerConfig: the certificate through GetCertificate and, when a CA
//     bundle is set, mutual TLS through GetConfigForClient (the current
//     client CA pool, RequireAndVerifyClientCert), TLS 1.2 at least.
//   - ClientConfig: the current CA bundle as roots, checked in
//     VerifyConnection (system roots without a bundle), the current client
//     certificate through GetClientCertificate, and an optional ServerName
//     that server certificates must carry instead of the dialed host.
//   - ServerCredentials and ClientCredentials wrap them as gRPC transport
//     credentials; ClientCredentials verifies a server dialed by IP address
//     against the IP, which a bare tls.Config cannot.
//
// Connections keep the material they were established with; new
// handshakes use the new one.
package tlsfiles

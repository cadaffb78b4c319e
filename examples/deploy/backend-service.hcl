# The same service definition as backend-service.json, in HCL.
service {
  name    = "user-srv"
  id      = "user-srv-10.0.1.7-50051"
  address = "10.0.1.7"
  port    = 50051
  tags    = ["v2"]

  meta = {
    lb-policy = "weighted_round_robin"
    lb-weight = "2"
  }

  weights {
    passing = 2
    warning = 1
  }

  check {
    id                                = "user-srv-10.0.1.7-50051:grpc-health"
    name                              = "gRPC health"
    grpc                              = "10.0.1.7:50051"
    grpc_use_tls                      = false
    interval                          = "2s"
    timeout                           = "2s"
    deregister_critical_service_after = "1m"
  }
}

package deps

import (
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/hashicorp/consul/api"
	_ "go.uber.org/goleak"
	_ "google.golang.org/grpc/balancer/grpclb"
	_ "google.golang.org/grpc/health"
	_ "google.golang.org/grpc/orca"
	_ "google.golang.org/protobuf/proto"
)

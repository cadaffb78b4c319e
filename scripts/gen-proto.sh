#!/usr/bin/env bash
# Regenerates the Go code of the protos under proto/. The generated code is
# committed; CI does not run this.
#
# Needs protoc (Debian: apt-get install protobuf-compiler). Installs the two
# Go plugins at the versions pinned below into a cache directory, so that
# whatever else is on PATH does not matter.
#
#   LOOKASIDE_CACHE  cache directory (default: $HOME/.cache/lookaside)
set -euo pipefail

protoc_gen_go_version=v1.36.12
protoc_gen_go_grpc_version=v1.6.2

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd -- "$script_dir/.." && pwd -P)

log() { printf 'gen-proto.sh: %s\n' "$*" >&2; }

if ! command -v protoc >/dev/null; then
	log "protoc not found: apt-get install -y protobuf-compiler"
	exit 1
fi

cache=${LOOKASIDE_CACHE:-${HOME:?HOME is not set}/.cache/lookaside}
bin=$cache/protoc-plugins/go-$protoc_gen_go_version-grpc-$protoc_gen_go_grpc_version
mkdir -p -- "$bin"
bin=$(cd -- "$bin" && pwd -P)
if [[ ! -x $bin/protoc-gen-go || ! -x $bin/protoc-gen-go-grpc ]]; then
	log "installing protoc-gen-go $protoc_gen_go_version and protoc-gen-go-grpc $protoc_gen_go_grpc_version into $bin"
	GOBIN=$bin go install "google.golang.org/protobuf/cmd/protoc-gen-go@$protoc_gen_go_version"
	GOBIN=$bin go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$protoc_gen_go_grpc_version"
fi

cd -- "$repo_root"
mapfile -t protos < <(find proto -name '*.proto' | LC_ALL=C sort)
log "$(protoc --version), generating ${#protos[@]} file(s)"
PATH=$bin:$PATH protoc \
	--proto_path=proto \
	--go_out=proto --go_opt=paths=source_relative \
	--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	"${protos[@]#proto/}"

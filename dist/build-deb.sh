#!/bin/sh
# Builds the Debian package from this repository:
#
#   dist/build-deb.sh [OUTDIR]        (default OUTDIR: dist/out)
#
# and prints the path of the .deb. Needs Go only: nfpm is run through the
# Go module proxy at a fixed version (offline once it is in the module
# cache). GOARCH=arm64 dist/build-deb.sh makes an arm64 package.
set -eu
cd "$(dirname "$0")/.."
out=${1:-dist/out}
NFPM=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0

# A Debian version: the tag without its v (v1.2.0 -> 1.2.0), else
# 0~git<date>.<commit> so that later builds sort later.
if tag=$(git describe --tags --exact-match 2>/dev/null); then
	version=${tag#v}
else
	version="0~git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S).$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
fi
arch=$(go env GOARCH)
# nfpm takes file paths as they are written in dist/nfpm.yaml.
bin=dist/.build/securerelay
trap 'rm -rf dist/.build' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$version" -o "$bin" ./cmd/securerelay
mkdir -p "$out"
SECURERELAY_VERSION=$version SECURERELAY_ARCH=$arch \
	go run "$NFPM" package --config dist/nfpm.yaml --packager deb --target "$out/" >&2
ls -1 "$out"/securerelay_"$(echo "$version" | sed 's/^[0-9]*://')"_"$arch".deb

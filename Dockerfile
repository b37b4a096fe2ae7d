# syntax=docker/dockerfile:1

# The spate binary: one image for every role (spate edge, spate project,
# spate fanout); the role is the command, e.g. `docker run IMAGE edge`.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that editing the code does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /spate ./cmd/spate

# Static, no shell, runs as uid 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /spate /spate
# The flags default to loopback addresses (127.0.0.1:8080, 127.0.0.1:9090),
# which nothing outside the container can reach: listen on every interface.
# SPATE_EDGE_ADDR is the ingestion address of spate edge; SPATE_ADMIN_ADDR the
# admin server (/metrics, /healthz, /readyz) of every role.
ENV SPATE_EDGE_ADDR=:8080 \
    SPATE_ADMIN_ADDR=:9090
EXPOSE 8080 9090
ENTRYPOINT ["/spate"]

# syntax=docker/dockerfile:1
# The `purser` binary in a small image; every role is a subcommand
# (`command-api`, `query-api`, `relay`, `project`, `saga`, `migrate`, `serve`).
#
#   docker build -t purser .
#   docker run --rm purser --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
# rdkafka builds its bundled librdkafka with TLS, and tikv-jemalloc-sys builds
# jemalloc (the allocator of `purser`): a C compiler, make,
# pkg-config and OpenSSL's headers (libssl-dev; installed in case the image
# lacks them). The runtime image has OpenSSL's library (libssl3).
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin purser \
 && cp target/release/purser /usr/local/bin/purser

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home purser
COPY --from=build /usr/local/bin/purser /usr/local/bin/purser
USER 10001
# Logs as JSON for collectors; services listen on every interface in a container.
ENV PURSER_LOG_FORMAT=json \
    PURSER_COMMAND_API_BIND=0.0.0.0:8080 \
    PURSER_QUERY_API_ADDR=0.0.0.0:8081 \
    PURSER_ADMIN_ADDR=0.0.0.0:8082
EXPOSE 8080 8081 8082
ENTRYPOINT ["purser"]
CMD ["--help"]

# Controller and policy-engine image. Not exercised by CI (no Docker engine on the development machines).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway-controller -p gateway-policy-engine

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/gateway-controller /usr/local/bin/gateway-controller
COPY --from=build /src/target/release/gateway-policy-engine /usr/local/bin/gateway-policy-engine
COPY config.toml /etc/gateway/config.toml
ENV APIP_GW_CONFIG=/etc/gateway/config.toml
EXPOSE 9090 18000 18001 9001
ENTRYPOINT ["gateway-controller"]

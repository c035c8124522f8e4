# The quicnprotochat node. Build: docker build -t quicnprotochat .
# The native crate is compiled in a build stage with the Rust toolchain; the runtime image has only Python, the
# built package and the shared libraries it links (libssl for SQLCipher).

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev python3-venv pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/qpc
ENV PATH=/opt/qpc/bin:$PATH
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --upgrade pip && pip install --no-cache-dir .

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/qpc --create-home qpc
COPY --from=build /opt/qpc /opt/qpc
ENV PATH=/opt/qpc/bin:$PATH \
    QPC_SERVER_DATA_DIR=/var/lib/qpc/node \
    QPC_SERVER_QUIC_LISTEN=0.0.0.0:7700 \
    QPC_SERVER_TCP_LISTEN=0.0.0.0:7700
USER qpc
VOLUME ["/var/lib/qpc"]
EXPOSE 7700/udp 7700/tcp
HEALTHCHECK --interval=10s --timeout=8s --retries=3 CMD ["qpc-server", "health", "--transport", "tcp"]
ENTRYPOINT ["qpc-server"]
CMD ["run"]

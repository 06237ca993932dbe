# framebroker in a container: the broker and its decoder, the web gateway and Debian's ffmpeg.
#
#   docker build -t framebroker:0.1.0 .
#   docker run --rm --shm-size=1g -p 8091:8091 framebroker:0.1.0
#
# The default command runs the broker with the built-in test camera (stream
# "demo") and the gateway on port 8091; the gateway's token is written to
# /run/framebroker/token unless FRAMEBROKER_TOKEN is set. Mount your own config
# at /etc/framebroker/framebroker.toml for real cameras.
#
# /dev/shm: Docker gives a container 64 MiB of /dev/shm, and every ring needs
# slots x frame size (4 x 6 MiB for one 1080p bgr24 stream). Start the container
# with --shm-size (or, in Kubernetes, an emptyDir with medium: Memory mounted at
# /dev/shm). Consumers in other containers share the rings through the same
# /dev/shm (`--ipc container:NAME`, or `--ipc shareable` + `--ipc container:`) and
# the socket directory (a volume at /run/framebroker); they run with group 10001
# (`--group-add 10001`). docs/DEPLOY.md has the full recipe.

# ---- build: both binaries, from the locked dependency set ----
FROM rust:1.95-bookworm AS build
# turbojpeg (the gateway's JPEG encoder) builds its bundled libjpeg-turbo: cmake + nasm.
# The broker's own decoder links Debian's FFmpeg libraries (bindgen needs libclang).
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake nasm pkg-config libclang-dev \
       libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every workspace member's sources: cargo resolves the whole workspace.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY proto proto
COPY broker broker
COPY client-rs client-rs
COPY web-gateway web-gateway
COPY tests tests
RUN cargo install --locked --path broker --root /out \
    && cargo install --locked --path broker/decoder --features libav --root /out \
    && cargo install --locked --path web-gateway --bin framebroker-gateway --root /out \
    && /out/bin/framebroker --version && /out/bin/framebroker-gateway --version \
    && /out/bin/framebroker-decoder --version

# ---- runtime: Debian's ffmpeg (and with it the libraries the decoder links), a non-root user ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg curl ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid, so consumers in other containers or pods can be given the group.
RUN groupadd --system --gid 10001 framebroker \
    && useradd --system --uid 10001 --gid framebroker --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin framebroker \
    && install -d -o framebroker -g framebroker -m 0750 /run/framebroker
# The broker finds its decoder next to itself (`--decoder auto`).
COPY --from=build /out/bin/framebroker /out/bin/framebroker-decoder /out/bin/framebroker-gateway /usr/local/bin/
COPY deploy/docker/entrypoint.sh /usr/local/bin/framebroker-entrypoint
COPY deploy/docker/framebroker.toml /etc/framebroker/framebroker.toml
ENV FRAMEBROKER_CONFIG=/etc/framebroker/framebroker.toml \
    FRAMEBROKER_SOCKET=/run/framebroker/control.sock \
    RUST_LOG=info
USER framebroker:framebroker
VOLUME ["/run/framebroker"]
EXPOSE 8091
# Healthy when the gateway answers and reaches the broker (/healthz needs no token).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -fsS --max-time 4 http://127.0.0.1:8091/healthz | grep -q '"broker_reachable":true'
ENTRYPOINT ["tini", "--", "framebroker-entrypoint"]
CMD ["all"]

# deepflow-tempo: multi-stage build. The build stage compiles the same binary target CI builds
# (`deepflow-tempo`); the runtime stage is a slim Debian with that binary, run as a non-root user.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin deepflow-tempo \
 && strip target/release/deepflow-tempo

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin deepflow \
 && mkdir -p /data && chown deepflow:deepflow /data
COPY --from=build /src/target/release/deepflow-tempo /usr/local/bin/deepflow-tempo
USER 10001:10001
WORKDIR /data
ENV DFT_LISTEN=0.0.0.0:3200 \
    DFT_EMBEDDED__PATH=/data/deepflow-tempo.db
EXPOSE 3200
ENTRYPOINT ["deepflow-tempo"]
CMD ["serve"]

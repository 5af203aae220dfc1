FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin deepflow-tempo

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /data deepflow && mkdir -p /data && chown deepflow /data
COPY --from=build /src/target/release/deepflow-tempo /usr/local/bin/deepflow-tempo
USER deepflow
WORKDIR /data
EXPOSE 3200
ENTRYPOINT ["deepflow-tempo"]
CMD ["serve"]

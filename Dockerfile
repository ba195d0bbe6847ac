# ecsmeta images: `--target init` (ecsmeta-init + iptables) and `--target proxy`
# (ecsmeta-proxy). `make images` builds both.
#
# The binaries come from `make build`, which cross-compiles static binaries to
# bin/linux-{amd64,arm64}/: the build needs no Go toolchain image and no module
# download, and TARGETARCH picks the right one (docker buildx / podman
# --platform linux/arm64 for Apple Silicon).
#
# Every base is a build arg:
#   IPTABLES_BASE  where the iptables binaries and their libraries are taken from
#                  (a Debian image; `iptables` is installed if it is missing)
#   INIT_BASE      the init image's base (root)
#   PROXY_BASE     the proxy image's base (non-root uid 65532)

ARG IPTABLES_BASE=debian:bookworm-slim
ARG INIT_BASE=gcr.io/distroless/static-debian12:latest
ARG PROXY_BASE=gcr.io/distroless/static-debian12:nonroot

# Only the iptables binaries (nft and legacy: go-iptables execs them), their
# extensions and the shared libraries they load: no shell, no apt, no perl.
FROM ${IPTABLES_BASE} AS iptables
RUN set -eu; \
    if ! command -v xtables-nft-multi >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*; \
    fi; \
    mkdir -p /out/usr/sbin /out/etc /out/run; \
    for v in nft legacy; do \
      cp "$(command -v xtables-$v-multi)" /out/usr/sbin/; \
      for t in iptables ip6tables; do for s in "" -save -restore; do ln -s xtables-$v-multi /out/usr/sbin/$t-$v$s; done; done; \
    done; \
    ext=$(dirname "$(ls /usr/lib/*/xtables/libxt_conntrack.so)"); \
    mkdir -p "/out$ext"; cp -a "$ext"/. "/out$ext/"; \
    for f in /out/usr/sbin/xtables-*-multi "$ext"/*.so; do ldd "$f"; done \
      | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u \
      | while read -r lib; do cp -L --parents "$lib" /out/; done; \
    cp /etc/protocols /etc/ethertypes /out/etc/ 2>/dev/null || cp /etc/protocols /out/etc/

FROM ${INIT_BASE} AS init
ARG TARGETARCH
ARG VERSION=dev
LABEL org.opencontainers.image.title="ecsmeta-init" \
      org.opencontainers.image.description="Init container: ECS credential endpoint on lo + iptables DNAT to a local credential server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/ecsmeta/ecsmeta"
COPY --from=iptables /out/ /
COPY bin/linux-${TARGETARCH}/ecsmeta-init /usr/local/bin/ecsmeta-init
# A read-only root has no writable /run for the legacy backend's xtables
# lock; /dev/shm is a tmpfs in Docker, compose and Kubernetes, and shared by
# a pod's containers, so every iptables user of the pod sees the same lock.
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XTABLES_LOCKFILE=/dev/shm/xtables.lock
USER 0:0
ENTRYPOINT ["/usr/local/bin/ecsmeta-init"]

FROM ${PROXY_BASE} AS proxy
ARG TARGETARCH
ARG VERSION=dev
LABEL org.opencontainers.image.title="ecsmeta-proxy" \
      org.opencontainers.image.description="Non-root sidecar: end-to-end readiness, metrics and userspace forwarding of the ECS credential endpoint" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/ecsmeta/ecsmeta"
COPY bin/linux-${TARGETARCH}/ecsmeta-proxy /usr/local/bin/ecsmeta-proxy
USER 65532:65532
EXPOSE 1339
# Docker and compose run this (`condition: service_healthy`); the image has
# no shell or curl. Build with `--format docker` under podman to keep it.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/ecsmeta-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/ecsmeta-proxy"]

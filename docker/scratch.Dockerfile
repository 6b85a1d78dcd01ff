# ovn-nb-proxy image without a base image, for machines that cannot pull one (this project's
# CI): tools/image.sh assembles the context from the release binary and exactly the shared
# libraries it links (glibc, libgcc_s), then builds this. The same runtime as docker/Dockerfile
# (distroless cc: glibc, no shell, no package manager); users with a registry build that one.
#   tools/image.sh        # podman build -f docker/scratch.Dockerfile target/image/context
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/usr/bin/ovn-nb-proxy"]

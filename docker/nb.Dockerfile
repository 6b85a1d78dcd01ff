# A standalone OVN Northbound ovsdb-server for the compose demo (Debian's ovn-central).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ovn-central && rm -rf /var/lib/apt/lists/*
CMD ["sh", "-c", "mkdir -p /var/run/ovn && ovsdb-tool create /tmp/nb.db /usr/share/ovn/ovn-nb.ovsschema && exec ovsdb-server --remote=punix:/var/run/ovn/ovnnb_db.sock --unixctl=/var/run/ovn/ovnnb_db.ctl /tmp/nb.db"]

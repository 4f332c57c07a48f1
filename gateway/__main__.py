"""`python -m gateway`: serve the API with uvicorn (a Ray driver joining the cluster)."""

from __future__ import annotations

import uvicorn

from cluster.config import load_config
from cluster.logs import setup_logging
from cluster.procs import raise_open_file_limit
from cluster.runtime import tune_gc
from gateway.app import create_app


def main() -> None:
    config = load_config()
    raise_open_file_limit()  # one descriptor per client connection, and a merchant can hold many
    config.log_dir.mkdir(parents=True, exist_ok=True)
    setup_logging("gateway", config.log_level, str(config.log_dir / "gateway.log"))
    app = create_app(config)
    tune_gc()
    ssl = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)} if config.tls_cert else {}
    # Keep-alive longer than the usual load balancer's idle timeout (60 s): the balancer, not we,
    # closes idle connections, so it never reuses one we are closing at that instant.
    uvicorn.run(app, host=config.http_host, port=config.http_port, log_config=None,
                access_log=False, server_header=False, timeout_keep_alive=int(config.http_keepalive_s),
                **ssl)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

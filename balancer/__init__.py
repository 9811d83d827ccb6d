"""The built-in balancer: an HTTP/1.1 reverse proxy (`proxy`, `http1`) and its admin API (`admin`).

`http1`, the hot path, runs compiled when `make native` built it from the current source (see `native`).
"""

from poolctl.balancer.native import enable as _enable_native

_enable_native(__path__)

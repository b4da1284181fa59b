"""wrk's text report as numbers: the shared parser of the bench reports."""

import re

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ms(text):
    """A wrk duration (`812.50us`, `1.20ms`, `2.00s`, `1.00m`) in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(text):
    """p50/p99 (ms), requests, seconds, rps, and non2xx/socket_errors when wrk printed them."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"(50|99)%\s+(\S+)", line)
        if m:
            out[f"p{m.group(1)}"] = ms(m.group(2))
        m = re.match(r"(\d+) requests in ([\d.]+)(ms|s|m)", line)
        if m:
            out["requests"] = int(m.group(1))
            out["seconds"] = ms(m.group(2) + m.group(3)) / 1000.0
        m = re.match(r"Requests/sec:\s+([\d.]+)", line)
        if m:
            out["rps"] = float(m.group(1))
        m = re.match(r"Non-2xx or 3xx responses: (\d+)", line)
        if m:
            out["non2xx"] = int(m.group(1))
        m = re.match(r"Socket errors: (.*)", line)
        if m:
            out["socket_errors"] = m.group(1)
    return out

"""`python -m benchmarks`: the pure core, then the HTTPS server; prints Markdown tables for the README."""

from benchmarks import core, server

print(core.report(core.run()))
print()
print(server.report(server.run()))

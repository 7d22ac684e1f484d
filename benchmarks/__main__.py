"""`python -m benchmarks`: the pure core, import times, then the HTTPS server; prints Markdown tables for the README."""

from benchmarks import core, imports, server

print(core.report(core.run()))
print()
print(imports.report(imports.run()))
print()
print(server.report(server.run()))

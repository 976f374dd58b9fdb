"""See a model's parts at work: token pieces (`tokens`), attention maps (`attention`), embedding neighbours.

Absolute imports keep the standard library's `inspect` module reachable: `import inspect` anywhere, this package
included, still finds the standard library; only `tailorlm.inspect` names this one.
"""

"""The pure core: validation, positions, recovery, queues, backoff, tokens.

Nothing in this package opens a socket or touches an event loop; clocks are
injected so that every rule is testable without I/O.
"""

"""Live connections: the hub, the stream state machine, WebSocket and SSE."""

"""Live queries: `GET /v1/ws` speaking upstream KalamDB's WebSocket protocol, served by every node
from its own applied state through the engine's change feed (ARCHITECTURE.md decision 13).

protocol (frames), query (what a subscription may ask), filter (its WHERE on a changed row), rows
(payloads), subscription (state and index), connection (one socket's bounded send queue), service
(dispatch, initial loads, resume), endpoint (the aiohttp route), client (the Python subscriber).
Importing this package imports none of them (the client must not pull in the server)."""

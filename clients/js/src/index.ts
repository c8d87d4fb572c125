/** geostream's TypeScript client. See README.md for a tour. */
export { GeostreamClient, CLIENT_VERSION, type ClientOptions, type ClientEvents, type RequestOptions, type EditOptions, type VersionedEditOptions } from "./client.js";
export { ChannelSubscription, LayerSubscription, PresenceSubscription, TileSubscription, Subscription, parseTileKey } from "./subscriptions.js";
export type { ChannelEvent, Cursor, LayerEvent, FeatureChange, PresenceEvent, TileEvent, TileMode, TileSelection } from "./subscriptions.js";
export { RpcError, ConnectionError, AbortError, ERROR_NAMES } from "./errors.js";
export { MemoryOutboxStore, IndexedDbOutboxStore, randomId, type OutboxEntry, type OutboxStore } from "./outbox.js";
export { SseClient, type SseEvent, type SseOptions } from "./transport_sse.js";
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export { encodeFrame, decodeFrame } from "./codec.js";
export { applyDelta, crc32 } from "./delta.js";
export type { WebSocketLike, WebSocketFactory } from "./transport_ws.js";
export * from "./types.js";
export { mergeFeature, changesBetween, propertiesPatch, canonical, type FeatureContent, type Changes, type MergeResult } from "./merge.js";

// nself-realtime client helper: the protocol's events, typed for socket.io-client, and
// `withCatchUp`, which remembers each room's last history position and rejoins the rooms with
// it after every reconnect, so that messages sent while the connection was down arrive, once
// and in order (rooms with history; others are rejoined as before).
import type { Socket } from "socket.io-client";

/** A position in a room's history. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface ErrorBody {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

/** Every acknowledgement: success with data, or an error. */
export type Ack<T = undefined> =
  | (T extends undefined ? { success: true; data?: undefined } : { success: true; data: T })
  | { success: false; error: ErrorBody };

export interface Message {
  roomName: string;
  userId: string | null;
  content: string;
  threadId: string | null;
  metadata: Record<string, unknown> | null;
  timestamp: string;
  messageId: string;
  /** Rooms with history only. */
  offset?: number;
  epoch?: string;
}

export interface JoinAnswer {
  roomName: string;
  memberCount: number;
  /** Rooms with history: where the socket is now. */
  position?: Position;
  /** When the join gave `since`: whether every missed message was delivered. */
  recovered?: boolean;
}

export interface HistoryAnswer {
  roomName: string;
  messages: Message[];
  position: Position | null;
}

export type PresenceStatus = "online" | "away" | "busy" | "offline";

export interface ServerToClientEvents {
  connected: (data: { socketId: string; serverTime: string; protocolVersion: string }) => void;
  authenticated: (data: { userId: string; sessionId: string | null; rooms: string[] }) => void;
  "user:joined": (data: { roomName: string; userId: string | null }) => void;
  "user:left": (data: { roomName: string; userId: string | null }) => void;
  "message:new": (message: Message) => void;
  "typing:event": (data: {
    roomName: string;
    threadId: string | null;
    users: { userId: string; startedAt: string }[];
  }) => void;
  "presence:changed": (data: {
    userId: string;
    status: PresenceStatus;
    customStatus: string | null;
    customEmoji: string | null;
  }) => void;
  pong: (data: { timestamp: number }) => void;
  error: (error: ErrorBody) => void;
}

export interface ClientToServerEvents {
  "room:join": (
    payload: { roomName: string; since?: Position },
    ack: (answer: Ack<JoinAnswer>) => void,
  ) => void;
  "room:leave": (payload: { roomName: string }, ack: (answer: Ack) => void) => void;
  "message:send": (
    payload: {
      roomName: string;
      content: string;
      threadId?: string;
      metadata?: Record<string, unknown>;
      clientMessageId?: string;
    },
    ack: (answer: Ack<{ messageId: string; timestamp: string; offset?: number; epoch?: string }>) => void,
  ) => void;
  "message:history": (
    payload: { roomName: string; limit?: number; before?: number; after?: number },
    ack: (answer: Ack<HistoryAnswer>) => void,
  ) => void;
  "typing:start": (payload: { roomName: string; threadId?: string }) => void;
  "typing:stop": (payload: { roomName: string; threadId?: string }) => void;
  "presence:update": (payload: {
    status: PresenceStatus;
    customStatus?: { text: string; emoji?: string; expiresAt?: string };
  }) => void;
  ping: () => void;
  pong: (payload: { timestamp: number }) => void;
  "auth:refresh": (payload: { token: string }, ack: (answer: Ack) => void) => void;
}

/** A socket.io-client socket speaking this protocol. */
export type RealtimeSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

export interface CatchUpOptions {
  /** After each rejoin: `recovered` is false when messages may have been missed (the
   * position was too old, history was lost, or the room keeps none): refetch then. */
  onRejoin?: (room: string, answer: Ack<JoinAnswer>) => void;
  /** How long a join waits for its answer, ms (default 10000). */
  timeoutMs?: number;
}

/** What `withCatchUp` returns. */
export interface CatchUp {
  /** Joins a room (and rejoins it after every reconnect, with its last position). */
  join(room: string): Promise<Ack<JoinAnswer>>;
  /** Leaves a room and forgets it. */
  leave(room: string): Promise<Ack>;
  /** The last position seen in a room. */
  position(room: string): Position | undefined;
  /** Stops rejoining. */
  close(): void;
}

/**
 * Remembers each joined room's last position (from join answers and `message:new`) and
 * rejoins every room with `since` after each reconnect. Register `message:new` handlers on
 * the socket as usual: missed messages arrive there, in order, before live ones.
 */
export function withCatchUp(socket: RealtimeSocket, options: CatchUpOptions = {}): CatchUp {
  const rooms = new Map<string, Position | undefined>();
  const timeout = options.timeoutMs ?? 10_000;

  const onMessage = (m: Message) => {
    if (!rooms.has(m.roomName) || m.offset === undefined || m.epoch === undefined) return;
    const last = rooms.get(m.roomName);
    if (!last || last.epoch !== m.epoch || m.offset > last.offset) {
      rooms.set(m.roomName, { offset: m.offset, epoch: m.epoch });
    }
  };

  const join = async (room: string): Promise<Ack<JoinAnswer>> => {
    const since = rooms.get(room);
    const payload = since ? { roomName: room, since } : { roomName: room };
    const answer = (await socket.timeout(timeout).emitWithAck("room:join", payload)) as Ack<JoinAnswer>;
    if (answer.success) {
      const position = answer.data.position;
      // The answer's position is where the socket is now; missed messages (already here)
      // may have moved it on.
      const known = rooms.get(room);
      if (position && (!known || known.epoch !== position.epoch || position.offset > known.offset)) {
        rooms.set(room, position);
      } else if (!rooms.has(room)) {
        rooms.set(room, undefined);
      }
    }
    return answer;
  };

  const onConnect = () => {
    // `connect` fires on the first connection too: only rooms joined before are rejoined.
    for (const room of [...rooms.keys()]) {
      join(room).then(
        (answer) => options.onRejoin?.(room, answer),
        (err: Error) =>
          options.onRejoin?.(room, {
            success: false,
            error: { code: "TIMEOUT", message: String(err && err.message) },
          }),
      );
    }
  };

  socket.on("message:new", onMessage);
  socket.on("connect", onConnect);

  return {
    async join(room: string) {
      if (!rooms.has(room)) rooms.set(room, undefined);
      const answer = await join(room);
      if (!answer.success) rooms.delete(room);
      return answer;
    },
    async leave(room: string) {
      rooms.delete(room);
      return (await socket.timeout(timeout).emitWithAck("room:leave", { roomName: room })) as Ack;
    },
    position(room: string) {
      return rooms.get(room);
    },
    close() {
      socket.off("message:new", onMessage);
      socket.off("connect", onConnect);
    },
  };
}

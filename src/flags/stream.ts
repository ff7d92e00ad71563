import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';

/** Unsent bytes a connection may hold before it is ended as stalled. */
const MAX_UNSENT_BYTES = 8 * 1024 * 1024;

/** An open server-sent-events connection. */
export interface EventStream {
  /** Sends one event; returns false once the connection is closed. */
  send(event: string, data: unknown, id?: number | string): boolean;
  /**
   * Sends one event whose data is already JSON (no line breaks, as `JSON.stringify` writes it),
   * so a change sent to many streams is serialised once.
   */
  sendJson(event: string, json: string, id?: number | string): boolean;
  close(): void;
  readonly closed: boolean;
}

/**
 * The server-sent-events connections of one app: each gets a heartbeat comment every
 * `heartbeatMs` (proxies drop silent connections) and all are ended by `closeAll` before the
 * server closes, so shutdown does not wait for clients to hang up.
 */
export function createStreamHub(heartbeatMs: number) {
  const open = new Set<EventStream>();

  function start(reply: FastifyReply, onClose: () => void): EventStream {
    reply.hijack();
    const raw: ServerResponse = reply.raw;
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': String(reply.request.id),
    });
    raw.write(': connected\n\n');
    let closed = false;
    const stream: EventStream = {
      get closed() {
        return closed;
      },
      send(event, data, id) {
        return stream.sendJson(event, JSON.stringify(data), id);
      },
      sendJson(event, json, id) {
        if (closed) return false;
        // A client that stopped reading: end it rather than buffer without bound (it reconnects
        // and is hydrated again). One large event alone never trips this.
        if (raw.writableLength > MAX_UNSENT_BYTES) {
          stream.close();
          return false;
        }
        raw.write(`${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${json}\n\n`);
        return true;
      },
      close() {
        if (closed) return;
        closed = true;
        clearInterval(timer);
        open.delete(stream);
        onClose();
        if (!raw.writableEnded) raw.end();
      },
    };
    const timer = setInterval(() => {
      if (!closed) raw.write(': heartbeat\n\n');
    }, heartbeatMs);
    timer.unref();
    raw.on('close', () => stream.close());
    open.add(stream);
    // Hung up before this point: 'close' has been emitted already and will not come again.
    if (raw.destroyed || raw.socket === null || raw.socket.destroyed) queueMicrotask(() => stream.close());
    return stream;
  }

  return {
    start,
    /** Ends every stream (at shutdown). */
    closeAll(): void {
      for (const s of [...open]) s.close();
    },
    size: () => open.size,
  };
}

export type StreamHub = ReturnType<typeof createStreamHub>;

import net from 'node:net';

/**
 * A TCP proxy to Redis that can stop forwarding bytes while keeping every socket open (new
 * connections too are accepted): to its clients, Redis is silent, not gone. `resume()` delivers
 * what was held, as a network does when a partition lifts.
 */
export async function pausableProxy(target: URL) {
  let paused = false;
  const held: (() => void)[] = [];
  const sockets = new Set<net.Socket>();
  /** Connections whose bytes are dropped for good (`blackhole`). */
  const dead = new WeakSet<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 6379), target.hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    const forward = (to: net.Socket) => (data: Buffer) => {
      if (dead.has(client)) return;
      if (paused) held.push(() => to.write(data));
      else to.write(data);
    };
    client.on('data', forward(upstream));
    upstream.on('data', forward(client));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `redis://127.0.0.1:${port}`,
    pause() {
      paused = true;
    },
    /**
     * The connections open now go silent for good, their sockets still open (state lost in a
     * middlebox, a peer that vanished); new connections work. Only a client that notices the
     * silence and reconnects hears Redis again.
     */
    blackhole() {
      for (const socket of sockets) dead.add(socket);
    },
    resume() {
      paused = false;
      for (const write of held.splice(0)) write();
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// The baseline every HTTP benchmark compares with: Fastify, one JSON route, nothing else.
import Fastify from 'fastify';

const app = Fastify({ logger: false });
app.get('/', async () => ({ status: 'ok' }));
app.post('/', async () => ({ status: 'ok' }));
await app.listen({ host: '127.0.0.1', port: Number(process.argv[2]) });
// Exit normally on SIGTERM so a CPU profile (BENCH_CPU_PROF) gets written.
process.once('SIGTERM', () => {
  app.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});

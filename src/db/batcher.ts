import type { DbHandle } from './client.ts';

export interface BatcherOptions<In, Out> {
  /**
   * Writes one batch and answers each item, in order (`undefined` where an item has no answer).
   * A throw fails every item of the batch.
   */
  run(items: In[]): Promise<Out[]>;
  /** Batches written at the same time. */
  maxInFlight: number;
  /** Items per batch at most. */
  maxBatch?: number;
}

/**
 * Group commit: writes submitted together share one batch, so under load the cost of a
 * statement and its commit is divided by the batch, and alone an item is written at once.
 * Each `submit` resolves when its batch has committed, so a caller answers only after its
 * write is durable. Batches are cut after the event loop's I/O phase (`setImmediate`), so
 * every request already read joins; an immediate flush would write one item at a time,
 * because PGlite runs on this thread and resolves in microtasks.
 */
export function createBatcher<In, Out>({ run, maxInFlight, maxBatch = 500 }: BatcherOptions<In, Out>) {
  interface Pending {
    item: In;
    resolve: (out: Out) => void;
    reject: (error: unknown) => void;
  }
  const queue: Pending[] = [];
  let scheduled = false;
  let inFlight = 0;

  function schedule(): void {
    if (scheduled || inFlight >= maxInFlight || queue.length === 0) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      if (inFlight >= maxInFlight || queue.length === 0) return;
      const batch = queue.splice(0, maxBatch);
      inFlight++;
      void write(batch).finally(() => {
        inFlight--;
        schedule();
      });
      schedule();
    });
  }

  async function write(batch: Pending[]): Promise<void> {
    let outs: Out[];
    try {
      outs = await run(batch.map((p) => p.item));
    } catch (error) {
      for (const p of batch) p.reject(error);
      return;
    }
    batch.forEach((p, i) => {
      p.resolve(outs[i] as Out);
    });
  }

  return {
    submit(item: In): Promise<Out> {
      return new Promise<Out>((resolve, reject) => {
        queue.push({ item, resolve, reject });
        schedule();
      });
    },
  };
}

/** PGlite is one connection: one batch at a time. PostgreSQL commits a few in parallel. */
export const batchesInFlight = (db: Pick<DbHandle, 'kind'>): number => (db.kind === 'postgres' ? 4 : 1);

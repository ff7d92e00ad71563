import { and, desc, eq, gt, isNull, or } from 'drizzle-orm';
import type { JWK } from 'jose';
import type { InvalidationBus } from '../bus/index.ts';
import { openAtStart, seal } from '../crypto/envelope.ts';
import type { Keyring } from '../crypto/keyring.ts';
import type { DbHandle } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { generateSigningKey, type SigningKey, signingKeyFromPrivateJwk, toJwks } from './jwt.ts';
import { signingKeys } from './schema.ts';

const TOPIC = 'identity.signing-keys';
// Tokens signed just before a rotation live ACCESS_TOKEN_TTL; a minute more covers clock skew.
const GRACE_MS = 60_000;

export interface SigningKeyStoreDeps {
  db: DbHandle;
  keyring: Keyring;
  bus: InvalidationBus;
  clock: () => Date;
  accessTokenTtlSeconds: number;
  rotationDays: number;
}

const aadOf = (id: string) => `signing-key/${id}`;

/**
 * The Ed25519 keys of access tokens, shared by every instance through the database: private
 * JWKs sealed at rest, the active key used for signing, the active and retired-but-live keys
 * published. A rotation tells other instances over the bus; each also re-reads periodically.
 */
export function createSigningKeyStore(deps: SigningKeyStoreDeps) {
  const { db, keyring, bus, clock } = deps;
  let active: SigningKey | undefined;
  let published: { kid: string; publicJwk: JWK }[] = [];
  const listeners: ((keys: JWK[]) => void)[] = [];
  let generation = 0;

  async function load(): Promise<void> {
    const now = clock();
    const rows = await db.db
      .select()
      .from(signingKeys)
      .where(or(isNull(signingKeys.notAfter), gt(signingKeys.notAfter, now)))
      .orderBy(desc(signingKeys.createdAt));
    const current = rows.find((r) => r.retiredAt === null);
    if (current && active?.kid !== current.kid) {
      const what = `the access-token signing key ${current.id}`;
      const jwk = JSON.parse(
        openAtStart(keyring, current.privateJwk, aadOf(current.id), what).toString('utf8'),
      ) as JWK;
      active = await signingKeyFromPrivateJwk(jwk, current.createdAt);
    }
    published = rows.map((r) => ({ kid: r.kid, publicJwk: r.publicJwk as JWK }));
    generation++;
    for (const listener of listeners) listener(published.map((k) => k.publicJwk));
  }

  async function insertKey(now: Date): Promise<boolean> {
    const key = await generateSigningKey(now);
    const id = newId('jwk');
    const inserted = await db.db
      .insert(signingKeys)
      .values({
        id,
        kid: key.kid,
        privateJwk: seal(keyring, JSON.stringify(key.privateJwk), aadOf(id)),
        publicJwk: key.publicJwk as Record<string, unknown>,
        createdAt: now,
      })
      .onConflictDoNothing()
      .returning({ id: signingKeys.id });
    return inserted.length > 0;
  }

  /** Loads the keys, making the first one when none is active (several instances: one wins). */
  async function start(): Promise<void> {
    const [current] = await db.db.select().from(signingKeys).where(isNull(signingKeys.retiredAt));
    if (!current) await insertKey(clock());
    await load();
    bus.subscribe(TOPIC, () => {
      load().catch(() => {});
    });
  }

  /** Replaces the active key; the retired one is published until its last token has expired. */
  async function rotate(): Promise<string> {
    const now = clock();
    await db.db.transaction(async (tx) => {
      await tx
        .update(signingKeys)
        .set({
          retiredAt: now,
          notAfter: new Date(now.getTime() + deps.accessTokenTtlSeconds * 1000 + GRACE_MS),
        })
        .where(isNull(signingKeys.retiredAt));
      const key = await generateSigningKey(now);
      const id = newId('jwk');
      await tx.insert(signingKeys).values({
        id,
        kid: key.kid,
        privateJwk: seal(keyring, JSON.stringify(key.privateJwk), aadOf(id)),
        publicJwk: key.publicJwk as Record<string, unknown>,
        createdAt: now,
      });
    });
    await load();
    await bus.publish(TOPIC, 'rotated');
    return activeKey().kid;
  }

  /** Periodic upkeep: rotate an old key (one instance wins the race), drop expired ones. */
  async function tick(): Promise<void> {
    const now = clock();
    const maxAgeMs = deps.rotationDays * 86_400_000;
    const [current] = await db.db.select().from(signingKeys).where(isNull(signingKeys.retiredAt));
    if (current && now.getTime() - current.createdAt.getTime() >= maxAgeMs) {
      const retired = await db.db
        .update(signingKeys)
        .set({
          retiredAt: now,
          notAfter: new Date(now.getTime() + deps.accessTokenTtlSeconds * 1000 + GRACE_MS),
        })
        .where(and(eq(signingKeys.id, current.id), isNull(signingKeys.retiredAt)))
        .returning({ id: signingKeys.id });
      if (retired.length > 0) {
        await insertKey(now);
        await bus.publish(TOPIC, 'rotated');
      }
    } else if (!current) {
      await insertKey(now);
    }
    await load();
  }

  function activeKey(): SigningKey {
    if (!active) throw new Error('signing keys not loaded');
    return active;
  }

  return {
    start,
    load,
    rotate,
    tick,
    activeKey,
    /** The JWKS document: active and retired-but-live public keys. */
    jwks: () => toJwks(published),
    publicKeys: () => published.map((k) => k.publicJwk),
    /** Called with the public keys after every (re)load. */
    onChange: (listener: (keys: JWK[]) => void) => listeners.push(listener),
    loads: () => generation,
  };
}

export type SigningKeyStore = ReturnType<typeof createSigningKeyStore>;

// OpenFeature provider for Steward's flags. Imported by applications and tests only, never by
// Steward's server code: @openfeature/server-sdk is a devDependency of Steward and a dependency
// of whoever uses this file.
import {
  ErrorCode,
  type EvaluationContext,
  GeneralError,
  type JsonValue,
  OpenFeatureEventEmitter,
  type Provider,
  ProviderEvents,
  ProviderFatalError,
  type ResolutionDetails,
} from '@openfeature/server-sdk';
import { applyDeltaEvents, createFlagEngine, type FlagEngine } from '../engine.ts';
import { type ClientFeatures, type DeltaEvent, deltaEventSchema, type FlagContext } from '../types.ts';

/** Options of the Steward provider. */
export interface StewardProviderOptions {
  /** Steward's base URL, e.g. `https://steward.example.com`. */
  url: string;
  /** An API key (`stw_…`) or access token with `flags:read`; sent as `Bearer`. */
  token: string;
  /** Environment whose flags to evaluate. */
  environment: string;
  /** Wait before reconnecting a dropped stream (ms, doubled up to 30 s). Default 1000. */
  reconnectMs?: number;
  fetch?: typeof fetch;
}

const STANDARD_FIELDS = new Set([
  'userId',
  'sessionId',
  'remoteAddress',
  'environment',
  'appName',
  'currentTime',
]);

/** OpenFeature's context → Unleash's: `targetingKey` is the user id; other values are properties. */
export function toFlagContext(context: EvaluationContext): FlagContext {
  const out: FlagContext = {};
  const properties: Record<string, string> = {};
  for (const [key, value] of Object.entries(context)) {
    if (value === undefined || value === null) continue;
    const text =
      value instanceof Date
        ? value.toISOString()
        : typeof value === 'object'
          ? JSON.stringify(value)
          : String(value);
    if (key === 'targetingKey') out.userId ??= text;
    else if (STANDARD_FIELDS.has(key)) out[key] = text;
    else properties[key] = text;
  }
  if (context.userId !== undefined && context.userId !== null) out.userId = String(context.userId);
  out.properties = properties;
  return out;
}

/** What changed between two states: flags added, removed or redefined, and those using a changed segment. */
export function changedFlags(before: ClientFeatures, after: ClientFeatures): string[] {
  const changed = new Set<string>();
  const old = new Map(before.features.map((f) => [f.name, JSON.stringify(f)]));
  for (const f of after.features) {
    if (old.get(f.name) !== JSON.stringify(f)) changed.add(f.name);
    old.delete(f.name);
  }
  for (const name of old.keys()) changed.add(name);
  const oldSeg = new Map((before.segments ?? []).map((s) => [s.id, JSON.stringify(s)]));
  const segments = new Set<number>();
  for (const s of after.segments ?? []) {
    if (oldSeg.get(s.id) !== JSON.stringify(s)) segments.add(s.id);
    oldSeg.delete(s.id);
  }
  for (const id of oldSeg.keys()) segments.add(id);
  for (const name of usingSegments(after, segments)) changed.add(name);
  return [...changed];
}

/** Flags of a state whose strategies name one of `segments`. */
function usingSegments(state: ClientFeatures, segments: ReadonlySet<number>): string[] {
  if (segments.size === 0) return [];
  return state.features
    .filter((f) => f.strategies?.some((s) => s.segments?.some((id) => segments.has(id))))
    .map((f) => f.name);
}

/** A refusal of the token (401/403): retrying cannot help. */
const FATAL_STATUSES = new Set([401, 403]);

/**
 * Evaluates Steward's flags in-process with the same engine as the server: hydrates from the
 * flag stream (`GET /v1/flags/{env}/stream`, whose first event is the whole state), then applies
 * its change events and emits `PROVIDER_CONFIGURATION_CHANGED`. Reconnects with back-off; while
 * disconnected it keeps evaluating the last state (`PROVIDER_STALE`).
 *
 * Startup: `initialize` resolves at the first hydration (READY). If Steward cannot be reached it
 * rejects (the SDK reports ERROR) and the provider keeps retrying with back-off, emitting
 * `PROVIDER_READY` once flags load; until then every evaluation answers the default with
 * `PROVIDER_NOT_READY`. A 401 or 403 is final: `PROVIDER_FATAL`, no more retries.
 */
export class StewardProvider implements Provider {
  readonly metadata = { name: 'steward' } as const;
  readonly runsOn = 'server' as const;
  readonly events = new OpenFeatureEventEmitter();
  private state: ClientFeatures = { features: [], segments: [] };
  private engine: FlagEngine = createFlagEngine(this.state);
  private readonly disabled = new Set<string>();
  private abort = new AbortController();
  private closed = false;
  /** Flags have loaded once: evaluations answer from them (stale or not). */
  private hydrated = false;
  /** Set when Steward refused the token (401/403): the provider stopped. */
  private fatal: string | undefined;
  /** `initialize`'s outcome, until it is settled. */
  private starting: { resolve: () => void; reject: (error: unknown) => void } | undefined;
  private running = false;
  private readonly fetchFn: typeof fetch;

  constructor(private readonly options: StewardProviderOptions) {
    this.fetchFn = options.fetch ?? fetch;
  }

  async initialize(): Promise<void> {
    if (this.hydrated) return;
    if (this.fatal !== undefined) throw new ProviderFatalError(this.fatal);
    const ready = new Promise<void>((resolve, reject) => {
      this.starting = { resolve, reject };
    });
    if (!this.running) void this.run();
    await ready;
  }

  async onClose(): Promise<void> {
    this.closed = true;
    this.abort.abort();
  }

  private settle(error?: unknown): void {
    const starting = this.starting;
    this.starting = undefined;
    if (starting === undefined) return;
    if (error === undefined) starting.resolve();
    else starting.reject(error);
  }

  private async run(): Promise<void> {
    this.running = true;
    const base = this.options.reconnectMs ?? 1000;
    let wait = base;
    try {
      while (!this.closed) {
        let failure: unknown;
        try {
          await this.connect(() => {
            wait = base;
          });
        } catch (error) {
          failure = error;
        }
        if (this.closed) return;
        if (failure instanceof ProviderFatalError) {
          this.fatal = failure.message;
          if (this.starting !== undefined) this.settle(failure);
          else {
            this.events.emit(ProviderEvents.Error, {
              message: failure.message,
              errorCode: ErrorCode.PROVIDER_FATAL,
            });
          }
          return;
        }
        const message = `Steward flag stream: ${failure instanceof Error ? failure.message : 'ended'}`;
        if (this.starting !== undefined) {
          // The SDK reports ERROR; this loop goes on and emits PROVIDER_READY once flags load.
          this.settle(new GeneralError(`${message}; retrying`, { cause: failure }));
        } else if (this.hydrated) {
          this.events.emit(ProviderEvents.Stale, { message: 'flag stream disconnected' });
        }
        // ±20 % so instances cut off together do not come back together.
        await new Promise((resolve) => setTimeout(resolve, wait * (0.8 + Math.random() * 0.4)).unref());
        wait = Math.min(wait * 2, 30_000);
      }
    } finally {
      this.running = false;
      // Closed before the first hydration: `initialize` must not wait forever.
      this.settle(new GeneralError('provider closed'));
    }
  }

  private async connect(onHydrated: () => void): Promise<void> {
    this.abort = new AbortController();
    const url = new URL(`/v1/flags/${encodeURIComponent(this.options.environment)}/stream`, this.options.url);
    const response = await this.fetchFn(url, {
      headers: { authorization: `Bearer ${this.options.token}`, accept: 'text/event-stream' },
      signal: this.abort.signal,
    });
    if (FATAL_STATUSES.has(response.status)) {
      await response.body?.cancel();
      throw new ProviderFatalError(
        `Steward refused the token (${response.status}): check it and its flags:read`,
      );
    }
    if (!response.ok || response.body === null) {
      await response.body?.cancel();
      throw new Error(`answered ${response.status}`);
    }
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body) {
      buffer += decoder.decode(chunk as Uint8Array, { stream: true });
      let end = buffer.indexOf('\n\n');
      while (end >= 0) {
        this.handle(buffer.slice(0, end), onHydrated);
        buffer = buffer.slice(end + 2);
        end = buffer.indexOf('\n\n');
      }
    }
  }

  private handle(block: string, onHydrated: () => void): void {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
    }
    if (data.length === 0 || (event !== 'unleash-connected' && event !== 'unleash-updated')) return;
    const parsed = (JSON.parse(data.join('\n')) as { events: unknown[] }).events.map((e) =>
      deltaEventSchema.parse(e),
    );
    const before = this.state;
    this.apply(parsed);
    if (event === 'unleash-connected') {
      onHydrated();
      const again = this.hydrated;
      this.hydrated = true;
      if (this.starting !== undefined)
        this.settle(); // the SDK emits PROVIDER_READY
      else this.events.emit(ProviderEvents.Ready);
      // Reconnected: what changed while the stream was down (the hydration replaced the state).
      if (again) {
        const flagsChanged = changedFlags(before, this.state);
        if (flagsChanged.length > 0) this.events.emit(ProviderEvents.ConfigurationChanged, { flagsChanged });
      }
      return;
    }
    const changed = new Set<string>();
    const segments = new Set<number>();
    for (const e of parsed) {
      if (e.type === 'feature-updated') changed.add(e.feature.name);
      else if (e.type === 'feature-removed') changed.add(e.featureName);
      else if (e.type === 'segment-updated') segments.add(e.segment.id);
      else if (e.type === 'segment-removed') segments.add(e.segmentId);
    }
    // A segment's change changes the result of every flag using it (before or after).
    for (const name of usingSegments(before, segments)) changed.add(name);
    for (const name of usingSegments(this.state, segments)) changed.add(name);
    this.events.emit(ProviderEvents.ConfigurationChanged, { flagsChanged: [...changed] });
  }

  private apply(events: DeltaEvent[]): void {
    this.state = applyDeltaEvents(this.state, events);
    this.engine = createFlagEngine(this.state);
    this.disabled.clear();
    for (const f of this.state.features) if (!f.enabled) this.disabled.add(f.name);
  }

  private missing<T>(flagKey: string, defaultValue: T): ResolutionDetails<T> | undefined {
    if (this.engine.has(flagKey)) return undefined;
    // Before the first hydration every flag is missing: say why (never FLAG_NOT_FOUND).
    if (!this.hydrated) {
      return {
        value: defaultValue,
        reason: 'ERROR',
        errorCode: (this.fatal === undefined
          ? 'PROVIDER_NOT_READY'
          : 'PROVIDER_FATAL') as ResolutionDetails<T>['errorCode'],
        errorMessage: this.fatal ?? 'Steward flags not loaded yet (retrying)',
      };
    }
    return {
      value: defaultValue,
      reason: 'ERROR',
      errorCode: 'FLAG_NOT_FOUND' as ResolutionDetails<T>['errorCode'],
      errorMessage: `Flag ${flagKey} not found in ${this.options.environment}`,
    };
  }

  resolveBooleanEvaluation(
    flagKey: string,
    defaultValue: boolean,
    context: EvaluationContext,
  ): Promise<ResolutionDetails<boolean>> {
    const miss = this.missing(flagKey, defaultValue);
    if (miss) return Promise.resolve(miss);
    const value = this.engine.isEnabled(flagKey, toFlagContext(context));
    // As the variant evaluations: on is a match; off is DISABLED for a disabled flag, else DEFAULT
    // (no strategy matched).
    return Promise.resolve({
      value,
      variant: value ? 'on' : 'off',
      reason: value ? 'TARGETING_MATCH' : this.disabled.has(flagKey) ? 'DISABLED' : 'DEFAULT',
    });
  }

  resolveStringEvaluation(flagKey: string, defaultValue: string, context: EvaluationContext) {
    return Promise.resolve(this.resolveVariant(flagKey, defaultValue, context, 'string'));
  }

  resolveNumberEvaluation(flagKey: string, defaultValue: number, context: EvaluationContext) {
    return Promise.resolve(this.resolveVariant(flagKey, defaultValue, context, 'number'));
  }

  resolveObjectEvaluation<T extends JsonValue>(flagKey: string, defaultValue: T, context: EvaluationContext) {
    return Promise.resolve(this.resolveVariant(flagKey, defaultValue, context, 'object'));
  }

  /**
   * Non-boolean flags read the selected variant's payload: `string` any payload, `number` a
   * `number` payload (or a numeric string), `object` a `json` payload. Another payload type is
   * TYPE_MISMATCH; a disabled flag or no variant returns the default (DISABLED / DEFAULT).
   */
  private resolveVariant<T>(
    flagKey: string,
    defaultValue: T,
    context: EvaluationContext,
    type: 'string' | 'number' | 'object',
  ): ResolutionDetails<T> {
    const miss = this.missing(flagKey, defaultValue);
    if (miss) return miss;
    const variant = this.engine.getVariant(flagKey, toFlagContext(context));
    if (!variant.feature_enabled) {
      return { value: defaultValue, reason: this.disabled.has(flagKey) ? 'DISABLED' : 'DEFAULT' };
    }
    if (!variant.enabled || variant.payload === undefined) {
      return {
        value: defaultValue,
        reason: 'DEFAULT',
        ...(variant.enabled ? { variant: variant.name } : {}),
      };
    }
    const mismatch = (message: string): ResolutionDetails<T> => ({
      value: defaultValue,
      reason: 'ERROR',
      errorCode: 'TYPE_MISMATCH' as ResolutionDetails<T>['errorCode'],
      errorMessage: message,
    });
    const { type: payloadType, value } = variant.payload;
    let out: unknown;
    if (type === 'string') out = value;
    else if (type === 'number') {
      out = Number(value);
      if (value.trim() === '' || !Number.isFinite(out))
        return mismatch(`Variant ${variant.name} is not a number`);
    } else {
      if (payloadType !== 'json') return mismatch(`Variant ${variant.name} carries ${payloadType}, not json`);
      try {
        out = JSON.parse(value);
      } catch {
        return mismatch(`Variant ${variant.name} carries invalid JSON`);
      }
      if (out === null || typeof out !== 'object')
        return mismatch(`Variant ${variant.name} is not an object`);
    }
    return { value: out as T, variant: variant.name, reason: 'SPLIT' };
  }
}

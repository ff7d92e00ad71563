// OpenFeature provider for Steward's flags. Imported by applications and tests only, never by
// Steward's server code: @openfeature/server-sdk is a devDependency of Steward and a dependency
// of whoever uses this file.
import {
  type EvaluationContext,
  type JsonValue,
  OpenFeatureEventEmitter,
  type Provider,
  ProviderEvents,
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

/**
 * Evaluates Steward's flags in-process with the same engine as the server: hydrates from the
 * flag stream (`GET /v1/flags/{env}/stream`, whose first event is the whole state), then applies
 * its change events and emits `PROVIDER_CONFIGURATION_CHANGED`. Reconnects with back-off; while
 * disconnected it keeps evaluating the last state (`PROVIDER_STALE`).
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
  private readonly fetchFn: typeof fetch;

  constructor(private readonly options: StewardProviderOptions) {
    this.fetchFn = options.fetch ?? fetch;
  }

  async initialize(): Promise<void> {
    let hydrated!: () => void;
    let failed!: (error: unknown) => void;
    const ready = new Promise<void>((resolve, reject) => {
      hydrated = resolve;
      failed = reject;
    });
    void this.run(hydrated, failed);
    await ready;
  }

  async onClose(): Promise<void> {
    this.closed = true;
    this.abort.abort();
  }

  private async run(hydrated: () => void, failed: (error: unknown) => void): Promise<void> {
    let first = true;
    let wait = this.options.reconnectMs ?? 1000;
    while (!this.closed) {
      try {
        await this.connect(() => {
          if (first) hydrated();
          else this.events.emit(ProviderEvents.Ready);
          first = false;
          wait = this.options.reconnectMs ?? 1000;
        });
      } catch (error) {
        if (this.closed) return;
        if (first) {
          failed(error);
          return;
        }
      }
      if (this.closed) return;
      this.events.emit(ProviderEvents.Stale, { message: 'flag stream disconnected' });
      await new Promise((resolve) => setTimeout(resolve, wait).unref());
      wait = Math.min(wait * 2, 30_000);
    }
  }

  private async connect(onHydrated: () => void): Promise<void> {
    this.abort = new AbortController();
    const url = new URL(`/v1/flags/${encodeURIComponent(this.options.environment)}/stream`, this.options.url);
    const response = await this.fetchFn(url, {
      headers: { authorization: `Bearer ${this.options.token}`, accept: 'text/event-stream' },
      signal: this.abort.signal,
    });
    if (!response.ok || response.body === null) {
      throw new Error(`Steward flag stream answered ${response.status}`);
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
    this.apply(parsed);
    if (event === 'unleash-connected') onHydrated();
    else {
      const flagsChanged = parsed.flatMap((e) =>
        e.type === 'feature-updated' ? [e.feature.name] : e.type === 'feature-removed' ? [e.featureName] : [],
      );
      this.events.emit(ProviderEvents.ConfigurationChanged, { flagsChanged });
    }
  }

  private apply(events: DeltaEvent[]): void {
    this.state = applyDeltaEvents(this.state, events);
    this.engine = createFlagEngine(this.state);
    this.disabled.clear();
    for (const f of this.state.features) if (!f.enabled) this.disabled.add(f.name);
  }

  private missing<T>(flagKey: string, defaultValue: T): ResolutionDetails<T> | undefined {
    if (this.engine.has(flagKey)) return undefined;
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
    return Promise.resolve({
      value,
      variant: value ? 'on' : 'off',
      reason: this.disabled.has(flagKey) ? 'DISABLED' : 'TARGETING_MATCH',
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

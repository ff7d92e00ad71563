import { PERMISSIONS, type PermissionInfo } from './catalogue.ts';

/** A catalogue entry with what the check path needs precomputed, so checks build no strings. */
export interface PermMeta {
  readonly info: PermissionInfo;
  /** Position in `PERMISSIONS`; per-principal tables are arrays indexed by it. */
  readonly index: number;
  readonly resourceWildcard: string;
  readonly actionWildcard: string;
}

export const PERMISSION_COUNT = PERMISSIONS.length;

export const META: ReadonlyMap<string, PermMeta> = new Map(
  PERMISSIONS.map((info, index) => [
    info.permission,
    { info, index, resourceWildcard: `${info.resource}:*`, actionWildcard: `*:${info.action}` },
  ]),
);

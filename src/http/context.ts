import type { FastifyRequest } from 'fastify';

/** Where a request came from, as audit events and access logs record it. */
export interface RequestContext {
  ip: string;
  userAgent: string | null;
  sessionId: string | null;
  requestId: string;
}

export function contextOf(request: FastifyRequest): RequestContext {
  return {
    ip: request.ip,
    userAgent: request.headers['user-agent'] ?? null,
    sessionId: request.principal?.sessionId ?? null,
    requestId: request.id,
  };
}

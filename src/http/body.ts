import type { FastifyInstance } from 'fastify';

/**
 * JSON is the only body the API reads. Fastify also parses text/plain out of the box, so a text
 * body reached validation as a string (400 "expected object") where every other non-JSON type
 * gets 415 `unsupported_media_type`. Without the parser, text/plain gets the 415 too. Contexts
 * that read raw bodies bring their own parsers (keys' /v1/ingest reads every type as a Buffer);
 * this runs before the domains register, so their contexts inherit JSON only.
 */
export function installJsonOnlyBodies(app: FastifyInstance): void {
  app.removeContentTypeParser('text/plain');
}

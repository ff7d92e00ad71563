// The API serves JSON only: nothing on it should ever be sniffed, framed, run as a page
// or cached (responses carry secrets). Each header costs on every request, so only these:
// X-Frame-Options, COOP and Referrer-Policy do nothing for JSON that the CSP below does
// not, and HSTS belongs to the TLS terminator in front of Steward (see docs/adr/0003).
const API_HEADERS = {
  'x-content-type-options': 'nosniff',
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'cache-control': 'no-store',
};

// The docs page runs swagger-ui's scripts and styles from our own origin.
const { 'content-security-policy': _csp, 'cache-control': _cache, ...DOCS_HEADERS } = API_HEADERS;

// Liveness, readiness and metrics are read by load balancers and Prometheus, never
// rendered by a browser: the headers above would only add bytes to the hottest probes.
const OPS_ROUTE = /^\/(healthz|readyz|metrics)(\?|$)/;
const NO_HEADERS = {};

/** The security headers for a response to this URL (precomputed objects: this runs on every request). */
export function securityHeadersFor(url: string): Readonly<Record<string, string>> {
  if (url.startsWith('/docs')) return DOCS_HEADERS;
  return OPS_ROUTE.test(url) ? NO_HEADERS : API_HEADERS;
}

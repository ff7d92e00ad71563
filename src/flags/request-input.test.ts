import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { encodeCursor } from '../http/pagination.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';

// What reaches the flags routes from the URL and headers: path parameters and cursors that
// PostgreSQL cannot hold are 400 (never a 500), and If-Match is read exactly as settings read it.
for (const { kind, skip } of STORES) {
  describe(`flags request input (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await vaultTestApp(kind);
      const created = await v.req('POST', '/v1/flags/development', {
        token: v.tokens.manager,
        body: { name: 'plain', enabled: true },
      });
      assert.equal(created.statusCode, 201, created.body);
    });
    after(() => v.close());

    test('NUL or a lone surrogate in an environment, a flag name or a cursor: 400, never a 500', async () => {
      const { req, tokens } = v;
      const token = tokens.manager;
      const cursor = (name: string) => encodeCursor({ name });
      const requests: [method: 'GET' | 'PUT' | 'DELETE' | 'POST', url: string, body?: unknown][] = [
        ['GET', '/v1/flags/development/a%00b'],
        ['PUT', '/v1/flags/development/a%00b', { name: 'ab', enabled: true }],
        ['DELETE', '/v1/flags/development/a%00b'],
        ['GET', '/v1/flags/development/a%00b/metrics'],
        ['GET', '/v1/flags/dev%00'],
        ['GET', '/v1/flags/dev%00/stream'],
        ['GET', '/v1/flags/dev%00/plain'],
        ['POST', '/v1/flags/dev%00', { name: 'ab', enabled: true }],
        ['POST', '/v1/flags/dev%00/evaluate', {}],
        ['GET', '/v1/flags/dev%00/plain/metrics'],
        ['GET', '/v1/flag-clients/dev%00'],
        ['GET', `/v1/flags/development?cursor=${cursor('a\u0000')}`],
        ['GET', `/v1/flags/development?cursor=${cursor('\u0000')}`],
        ['GET', `/v1/flags/development?cursor=${cursor('a\ud800')}`],
        ['GET', `/v1/flags/development?cursor=${cursor('\udc00b')}`],
      ];
      for (const [method, url, body] of requests) {
        const res = await req(method, url, { token, ...(body === undefined ? {} : { body }) });
        assert.equal(res.statusCode, 400, `${method} ${url}: ${res.body}`);
        assert.match(res.json().code, /^(validation_failed|invalid_cursor|unsupported_character)$/, res.body);
      }
      // Lone surrogates cannot come through a URL (their UTF-8 is invalid); the schemas refuse
      // them anyway (checked on the cursor above). Ordinary values still work.
      assert.equal((await req('GET', '/v1/flags/development/plain', { token })).statusCode, 200);
      const page = await req('GET', `/v1/flags/development?cursor=${cursor('a')}`, { token });
      assert.equal(page.statusCode, 200, page.body);
      assert.deepEqual(
        page.json().data.map((f: { name: string }) => f.name),
        ['plain'],
      );
      assert.equal(
        (await req('GET', '/v1/flags/development/no-such-flag', { token })).statusCode,
        404,
        'a well-formed unknown name is still 404',
      );
    });

    test('If-Match: every header form gets on a flag and a segment what it gets on a setting', async () => {
      const { req, tokens } = v;
      const token = tokens.manager;
      const setting = await req('PUT', '/v1/settings/development/if_match_forms', {
        token,
        body: { value: 1, value_type: 'int' },
      });
      assert.equal(setting.statusCode, 201, setting.body);
      assert.equal(
        (
          await req('POST', '/v1/flags/development', {
            token,
            body: { name: 'if-match-forms', enabled: true },
          })
        ).statusCode,
        201,
      );
      const segment = await req('POST', '/v1/segments', {
        token,
        body: { name: 'if-match-forms', constraints: [] },
      });
      assert.equal(segment.statusCode, 201, segment.body);
      const segmentUrl = `/v1/segments/${segment.json().id}`;
      const targets = {
        setting: {
          url: '/v1/settings/development/if_match_forms',
          body: () => ({ value: 2 }),
        },
        flag: {
          url: '/v1/flags/development/if-match-forms',
          body: () => ({ name: 'if-match-forms', enabled: true }),
        },
        segment: { url: segmentUrl, body: () => ({ name: 'if-match-forms', constraints: [] }) },
      };
      // `{v}` is the resource's current version, `{n}` the next one (never current).
      const forms: [form: string, expected: number][] = [
        ['{v}', 200],
        ['"{v}"', 200],
        [' "{v}" ', 200],
        ['"{v}",', 200],
        [', "{v}"', 200],
        ['"{v}",,"{n}"', 200],
        ['"{n}", "{v}"', 200],
        ['"{v}", W/"{v}"', 200],
        ['"{v}"\t', 200],
        ['*', 200],
        [' {v} ', 200],
        ['0{v}', 412],
        ['00{v}', 412],
        ['000000{v}', 412],
        ['"0{v}"', 412],
        ['{n}', 412],
        ['"{n}"', 412],
        ['W/"{v}"', 412],
        ['""', 412],
        ['"x"', 412],
        ['"\u00e9{v}"', 412],
        ['0', 412],
        ['"{v}" "{n}"', 400],
        ['*, "{v}"', 400],
        ['**', 400],
        ['"{v}"x', 400],
        ['W/ "{v}"', 400],
        ['W/{v}', 400],
        ['{v}, "{n}"', 400],
        ['+{v}', 400],
        ['-{v}', 400],
        ['{v}.0', 400],
        ['0x1', 400],
        ['1234567890', 400],
        ['"{v}', 400],
        ['', 400],
        [' ', 400],
        [',', 400],
        [', ,', 400],
        ["'{v}'", 400],
      ];
      for (const [form, expected] of forms) {
        const answers: Record<string, number> = {};
        for (const [what, target] of Object.entries(targets)) {
          const version: number = (await req('GET', target.url, { token })).json().version;
          const header = form.replaceAll('{v}', String(version)).replaceAll('{n}', String(version + 1));
          const res = await req('PUT', target.url, {
            token,
            headers: { 'if-match': header },
            body: target.body(),
          });
          answers[what] = res.statusCode;
          // A 412's detail is a whole sentence, also when the header names no version at all.
          if (res.statusCode === 412) assert.doesNotMatch(res.json().detail, /not $/, `${what} ${header}`);
        }
        assert.deepEqual(
          answers,
          { setting: expected, flag: expected, segment: expected },
          `If-Match ${JSON.stringify(form)}`,
        );
      }
    });
  });
}

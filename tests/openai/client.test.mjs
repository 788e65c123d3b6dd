// tests/openai/client.test.mjs
//
// The official `openai` npm client (the version pinned in package.json) against a started modelpool_server,
// run with node's own test runner (`node --test`). It shows that what the server sends is what that client
// expects: models.list; embeddings (the client's default base64, float, explicit base64, batches, images);
// completions and chat, streamed and not; a chat stream with include_usage; an aborted stream; 64
// concurrent streams; 400/404/429 as the client's APIError subclasses; an image generation's PNG; the drain on
// SIGTERM. A second server with tests/openai/tight-config.json (a queue of one) provides the 429s.
//
// Environment: MODELPOOL_SERVER (required) names the binary; MODELPOOL_CACHE_DIR (optional) keeps the demo
// weights between runs.
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

import OpenAI from 'openai';

import { ServerProcess, dataUrl, makePng, readPng, waitFor } from './support.mjs';

const DEMO_MODELS = ['text-embedding-demo', 'image-embedding-demo', 'demo-chat', 'demo-vision', 'demo-painter'];
const DIMENSIONS = 256; // the demo text embedder's vectors
const TEST = { timeout: 60_000 };

/// A client without retries, so that every error surfaces at once (a hidden retry could mask a 5xx).
function clientFor(server, options = {}) {
    return new OpenAI({ apiKey: 'not-checked', baseURL: server.baseURL, maxRetries: 0, timeout: 30_000,
        ...options });
}

function norm(vector) {
    return Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0));
}

function wordCount(text) {
    return text.trim().split(/\s+/).filter(Boolean).length;
}

/// Reads a chat stream to its end: the text of each choice, the finish reason of each, and every chunk.
async function readChatStream(stream) {
    const chunks = [];
    const texts = [];
    const finishes = [];
    for await (const chunk of stream) {
        chunks.push(chunk);
        for (const choice of chunk.choices) {
            texts[choice.index] = (texts[choice.index] ?? '') + (choice.delta?.content ?? '');
            if (choice.finish_reason) {
                finishes[choice.index] = choice.finish_reason;
            }
        }
    }
    return { chunks, texts, finishes };
}

/// Asserts that `promise` rejects with an instance of `type` (an APIError subclass) with `status`, and that
/// its body fields match `fields`; returns the error.
async function expectApiError(promise, type, status, fields = {}) {
    let caught;
    await assert.rejects(promise, (error) => {
        caught = error;
        return true;
    });
    assert.ok(caught instanceof OpenAI.APIError, `expected an APIError, got ${caught?.constructor?.name}: ${caught}`);
    assert.ok(caught instanceof type, `expected ${type.name}, got ${caught.constructor.name}: ${caught.message}`);
    assert.equal(caught.status, status, caught.message);
    for (const [key, value] of Object.entries(fields)) {
        if (value instanceof RegExp) {
            assert.match(caught[key], value, `error.${key}`);
        } else {
            assert.equal(caught[key], value, `error.${key} (${caught.message})`);
        }
    }
    return caught;
}

/// A solid-colour square PNG with a disc of `disc` colour in the middle, as a data URL.
function discPng(background, disc) {
    const size = 32;
    return dataUrl('image/png', makePng(size, size, (x, y) =>
        (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2 ? disc : background));
}

describe('modelpool_server with its demo models', () => {
    let server;
    let client;
    before(async () => {
        server = await ServerProcess.start();
        client = clientFor(server);
    });
    after(() => server?.kill());

    it('models.list lists the five demo models', TEST, async () => {
        const page = await client.models.list();
        assert.deepEqual(page.data.map((m) => m.id).sort(), [...DEMO_MODELS].sort());
        for (const model of page.data) {
            assert.equal(model.object, 'model');
            assert.equal(typeof model.owned_by, 'string');
            assert.ok(Number.isInteger(model.created), `created: ${model.created}`);
        }
        const listed = [];
        for await (const model of client.models.list()) { // the client's auto-pagination over one page
            listed.push(model.id);
        }
        assert.deepEqual(listed, page.data.map((m) => m.id));
    });

    describe('embeddings', () => {
        const text = 'slow and steady wins the race';
        let single; // the client's default: it asks for base64 and decodes to floats itself

        it('one string: 256 floats of unit norm, decoded from base64 by the client', TEST, async () => {
            const response = await client.embeddings.create({ model: 'text-embedding-demo', input: text });
            assert.equal(response.object, 'list');
            assert.equal(response.model, 'text-embedding-demo');
            assert.equal(response.data.length, 1);
            assert.equal(response.data[0].object, 'embedding');
            assert.equal(response.data[0].index, 0);
            single = response.data[0].embedding;
            assert.equal(single.length, DIMENSIONS);
            assert.ok(single.every(Number.isFinite));
            assert.ok(Math.abs(norm(single) - 1) < 1e-3, `norm ${norm(single)}`);
            assert.equal(response.usage.prompt_tokens, 6); // the server counts words
            assert.equal(response.usage.total_tokens, 6);
        });

        it("encoding_format 'float' gives the same vector as JSON numbers", TEST, async () => {
            const response = await client.embeddings.create(
                { model: 'text-embedding-demo', input: text, encoding_format: 'float' });
            const vector = response.data[0].embedding;
            assert.ok(Array.isArray(vector) && vector.every((x) => typeof x === 'number'));
            // Each JSON number is a float32 printed exactly: as float32s the two decodings are equal.
            assert.deepEqual(Float32Array.from(vector), Float32Array.from(single));
        });

        it("encoding_format 'base64': 256 little-endian float32 equal to the float result", TEST, async () => {
            const response = await client.embeddings.create(
                { model: 'text-embedding-demo', input: text, encoding_format: 'base64' });
            const encoded = response.data[0].embedding;
            assert.equal(typeof encoded, 'string', 'an explicit base64 request is returned undecoded');
            const bytes = Buffer.from(encoded, 'base64');
            assert.equal(bytes.length, DIMENSIONS * 4);
            const decoded = Array.from({ length: DIMENSIONS }, (_, i) => bytes.readFloatLE(i * 4));
            assert.deepEqual(Float32Array.from(decoded), Float32Array.from(single));
        });

        it('a batch of three: in order, distinct texts differ, the same text matches the single call', TEST,
            async () => {
                const inputs = [text, 'the boy who cried wolf', 'a fox and a bunch of grapes'];
                const response = await client.embeddings.create({ model: 'text-embedding-demo', input: inputs });
                assert.deepEqual(response.data.map((d) => d.index), [0, 1, 2]);
                const vectors = response.data.map((d) => d.embedding);
                for (const vector of vectors) {
                    assert.equal(vector.length, DIMENSIONS);
                    assert.ok(Math.abs(norm(vector) - 1) < 1e-3, `norm ${norm(vector)}`);
                }
                assert.deepEqual(Float32Array.from(vectors[0]), Float32Array.from(single));
                assert.notDeepEqual(vectors[1], vectors[0]);
                assert.notDeepEqual(vectors[2], vectors[1]);
                assert.equal(response.usage.prompt_tokens, 6 + 5 + 7);
            });

        it('image embeddings from data URLs: the same image, the same vector', TEST, async () => {
            const red = discPng([255, 255, 255], [220, 20, 20]);
            const blue = discPng([255, 255, 255], [20, 20, 220]);
            const response = await client.embeddings.create(
                { model: 'image-embedding-demo', input: [red, blue, red], encoding_format: 'float' });
            const vectors = response.data.map((d) => d.embedding);
            assert.equal(vectors.length, 3);
            for (const vector of vectors) {
                assert.ok(vector.length > 0);
                assert.ok(Math.abs(norm(vector) - 1) < 1e-3, `norm ${norm(vector)}`);
            }
            assert.deepEqual(vectors[2], vectors[0]);
            assert.notDeepEqual(vectors[1], vectors[0]);
        });
    });

    describe('completions', () => {
        const params = { model: 'demo-chat', prompt: 'The Fox and the Grapes', max_tokens: 24, seed: 7,
            temperature: 0.8 };

        it('not streamed: max_tokens words, usage, finish_reason; a seed makes it repeatable', TEST, async () => {
            const response = await client.completions.create(params);
            assert.equal(response.object, 'text_completion');
            assert.match(response.id, /^cmpl-/);
            assert.equal(response.model, 'demo-chat');
            assert.equal(response.choices.length, 1);
            const [choice] = response.choices;
            assert.equal(choice.index, 0);
            // The demo generator always writes max_tokens words unless a stop sequence ends it.
            assert.equal(choice.finish_reason, 'length');
            assert.equal(wordCount(choice.text), params.max_tokens, JSON.stringify(choice.text));
            assert.deepEqual(response.usage,
                { prompt_tokens: 5, completion_tokens: params.max_tokens, total_tokens: 5 + params.max_tokens });

            const again = await client.completions.create(params);
            assert.equal(again.choices[0].text, choice.text, 'the same seed gives the same text');
            const other = await client.completions.create({ ...params, seed: 8 });
            assert.notEqual(other.choices[0].text, choice.text, 'another seed gives another text');
        });

        it('streamed: the chunks concatenate to the non-streamed text for the same seed', TEST, async () => {
            const expected = (await client.completions.create(params)).choices[0].text;
            const stream = await client.completions.create({ ...params, stream: true });
            let text = '';
            let finish;
            let chunks = 0;
            for await (const chunk of stream) {
                assert.equal(chunk.object, 'text_completion');
                assert.equal(chunk.choices.length, 1);
                text += chunk.choices[0].text;
                finish = chunk.choices[0].finish_reason ?? finish;
                ++chunks;
            }
            assert.equal(text, expected);
            assert.equal(finish, 'length');
            assert.equal(chunks, params.max_tokens + 1); // a word per chunk, then the finish_reason chunk
        });

        it('temperature 0 is greedy: the same text without a seed', TEST, async () => {
            const greedy = { model: 'demo-chat', prompt: 'The Hare and the Tortoise', max_tokens: 16, temperature: 0 };
            const first = await client.completions.create(greedy);
            const second = await client.completions.create(greedy);
            assert.equal(second.choices[0].text, first.choices[0].text);
        });

        it('a stop sequence ends the text before it, with finish_reason "stop"', TEST, async () => {
            const response = await client.completions.create(
                { ...params, max_tokens: 400, stop: ['.'] });
            const [choice] = response.choices;
            assert.equal(choice.finish_reason, 'stop', JSON.stringify(choice));
            assert.ok(!choice.text.includes('.'), JSON.stringify(choice.text));
            assert.ok(response.usage.completion_tokens < 400);
        });
    });

    describe('chat completions', () => {
        const messages = [{ role: 'system', content: 'You tell fables.' },
            { role: 'user', content: 'Tell me about the tortoise and the hare' }];

        it('a stream with include_usage: deltas, finish_reason, then a usage chunk with no choices', TEST,
            async () => {
                const request = { model: 'demo-chat', messages, max_tokens: 20, seed: 3 };
                const plain = await client.chat.completions.create(request);
                assert.equal(plain.object, 'chat.completion');
                assert.equal(plain.choices[0].message.role, 'assistant');
                assert.equal(plain.choices[0].finish_reason, 'length');

                const { chunks, texts, finishes } = await readChatStream(await client.chat.completions.create(
                    { ...request, stream: true, stream_options: { include_usage: true } }));
                const last = chunks.at(-1);
                const body = chunks.slice(0, -1);
                assert.equal(new Set(chunks.map((c) => c.id)).size, 1, 'one id for the whole stream');
                assert.match(last.id, /^chatcmpl-/);
                for (const chunk of chunks) {
                    assert.equal(chunk.object, 'chat.completion.chunk');
                    assert.equal(chunk.model, 'demo-chat');
                }
                // OpenAI's framing: the role first, then content deltas, then an empty delta with the finish
                // reason, then the usage chunk with an empty choices array.
                assert.deepEqual(body[0].choices[0].delta, { role: 'assistant', content: '' });
                const contents = body.slice(1, -1);
                assert.equal(contents.length, request.max_tokens);
                for (const chunk of contents) {
                    assert.equal(chunk.choices.length, 1);
                    assert.equal(chunk.choices[0].finish_reason, null);
                    assert.ok(chunk.choices[0].delta.content.length > 0);
                }
                assert.deepEqual(body.at(-1).choices[0].delta, {});
                assert.equal(body.at(-1).choices[0].finish_reason, 'length');
                for (const chunk of body) {
                    assert.ok('usage' in chunk && chunk.usage === null, 'usage: null until the last chunk');
                }
                assert.deepEqual(last.choices, []);
                assert.deepEqual(last.usage, {
                    prompt_tokens: plain.usage.prompt_tokens,
                    completion_tokens: request.max_tokens,
                    total_tokens: plain.usage.prompt_tokens + request.max_tokens,
                });
                assert.ok(last.usage.prompt_tokens > 0);
                assert.deepEqual(finishes, ['length']);
                assert.equal(texts[0], plain.choices[0].message.content, 'same seed, same text, streamed or not');
            });

        it('on the wire: "data: {json}" events ending with "data: [DONE]"', TEST, async () => {
            const response = await fetch(`${server.baseURL}/chat/completions`, {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({ model: 'demo-chat', messages, max_tokens: 5, stream: true,
                    stream_options: { include_usage: true } }),
            });
            assert.equal(response.status, 200);
            assert.match(response.headers.get('content-type'), /^text\/event-stream/);
            const body = await response.text();
            assert.ok(body.endsWith('\n\n'), JSON.stringify(body.slice(-40)));
            const events = body.slice(0, -2).split('\n\n');
            assert.equal(events.at(-1), 'data: [DONE]');
            for (const event of events.slice(0, -1)) {
                assert.match(event, /^data: \{.*\}$/s);
                JSON.parse(event.slice('data: '.length));
            }
            assert.equal(events.length, 1 + 5 + 1 + 1 + 1); // role, 5 words, finish, usage, [DONE]
        });

        it('n = 3 streams three choices, each with its finish_reason', TEST, async () => {
            const { texts, finishes } = await readChatStream(await client.chat.completions.create(
                { model: 'demo-chat', messages, max_tokens: 6, n: 3, stream: true }));
            assert.deepEqual(finishes, ['length', 'length', 'length']);
            for (const text of texts) {
                assert.equal(wordCount(text), 6, JSON.stringify(text));
            }
        });

        it('an aborted stream is cancelled on the server, and the next request succeeds', TEST, async () => {
            const chatRoute = { route: '/v1/chat/completions', status: '499' };
            const cancelledBefore = (await server.metrics()).get('modelpool_http_requests_total', chatRoute);
            // Long enough (8 x 4096 words) that the server is still writing when the client goes away.
            const stream = await client.chat.completions.create(
                { model: 'demo-chat', messages, max_tokens: 4096, n: 8, stream: true });
            let words = 0;
            let finished = false;
            for await (const chunk of stream) {
                finished ||= chunk.choices.some((c) => c.finish_reason);
                if (chunk.choices[0]?.delta?.content && ++words === 5) {
                    stream.controller.abort(); // the iteration then ends without an error
                }
            }
            assert.ok(words >= 5);
            assert.ok(!finished, 'the stream was aborted before any choice finished');

            const next = await client.chat.completions.create({ model: 'demo-chat', messages, max_tokens: 8 });
            assert.equal(wordCount(next.choices[0].message.content), 8);

            // The server saw the disconnect (logged as 499) and has nothing left in flight but the scrape.
            const metrics = await waitFor('the aborted stream to end on the server', async () => {
                const m = await server.metrics();
                return m.get('modelpool_http_requests_total', chatRoute) === cancelledBefore + 1 &&
                    m.get('modelpool_http_requests_in_flight') === 1 ? m : null;
            });
            assert.ok(metrics.has('modelpool_http_requests_in_flight'));
        });

        it('64 concurrent streams all complete normally', TEST, async () => {
            const count = 64;
            const results = await Promise.all(Array.from({ length: count }, async (_, i) =>
                readChatStream(await client.chat.completions.create({
                    model: 'demo-chat', messages: [{ role: 'user', content: `Tell fable number ${i}` }],
                    max_tokens: 16, seed: i, stream: true,
                }))));
            for (const [i, { texts, finishes }] of results.entries()) {
                assert.deepEqual(finishes, ['length'], `stream ${i}`);
                assert.equal(wordCount(texts[0]), 16, `stream ${i}: ${JSON.stringify(texts[0])}`);
            }
            await waitFor('no request in flight but the scrape', async () =>
                (await server.metrics()).get('modelpool_http_requests_in_flight') === 1);
        });

        it('vision: a chat with an image_url data URL is answered about the image', TEST, async () => {
            const response = await client.chat.completions.create({
                model: 'demo-vision',
                messages: [{ role: 'user', content: [
                    { type: 'text', text: 'What colour is it?' },
                    { type: 'image_url', image_url: { url: discPng([250, 250, 250], [220, 20, 20]) } },
                ] }],
            });
            const answer = response.choices[0].message.content;
            assert.ok(answer.length > 0);
            assert.match(answer, /red/i);
        });
    });

    describe('errors surface as the client\'s APIError subclasses', () => {
        const messages = [{ role: 'user', content: 'hello' }];

        it('400: a field of the wrong type or range, named in param and message', TEST, async () => {
            await expectApiError(
                client.chat.completions.create({ model: 'demo-chat', messages, temperature: 'hot' }),
                OpenAI.BadRequestError, 400,
                { type: 'invalid_request_error', code: 'invalid_value', param: 'temperature', message: /temperature/ });
            await expectApiError(
                client.completions.create({ model: 'demo-chat', prompt: 'x', max_tokens: -1 }),
                OpenAI.BadRequestError, 400, { param: 'max_tokens', message: /max_tokens/ });
            await expectApiError(
                client.images.generate({ model: 'demo-painter', prompt: 'x', size: 'big' }),
                OpenAI.BadRequestError, 400, { param: 'size', message: /size/ });
            // A model of another capability: chat to an embedding model.
            await expectApiError(
                client.chat.completions.create({ model: 'text-embedding-demo', messages }),
                OpenAI.BadRequestError, 400, { param: 'model', message: /text-embedding-demo/ });
        });

        it('404: an unknown model is NotFoundError with code model_not_found, streamed or not', TEST, async () => {
            const notFound = { type: 'invalid_request_error', code: 'model_not_found', param: 'model',
                message: /gpt-4/ };
            await expectApiError(client.chat.completions.create({ model: 'gpt-4', messages }),
                OpenAI.NotFoundError, 404, notFound);
            await expectApiError(client.chat.completions.create({ model: 'gpt-4', messages, stream: true }),
                OpenAI.NotFoundError, 404, notFound);
            await expectApiError(client.embeddings.create({ model: 'gpt-4', input: 'x' }),
                OpenAI.NotFoundError, 404, notFound);
        });
    });

    it('images.generate: b64_json PNGs of the requested non-square size', TEST, async () => {
        const response = await client.images.generate(
            { model: 'demo-painter', prompt: 'a fox under a vine', size: '64x48', n: 2, response_format: 'b64_json' });
        assert.ok(Number.isInteger(response.created));
        assert.equal(response.data.length, 2);
        for (const image of response.data) {
            const png = readPng(Buffer.from(image.b64_json, 'base64'));
            assert.equal(png.width, 64);
            assert.equal(png.height, 48);
        }
    });

    // Last: it stops the server.
    it('SIGTERM drains: /readyz turns 503, a stream in flight finishes, then exit code 0', TEST, async () => {
        const stream = await client.chat.completions.create({
            model: 'demo-chat', messages: [{ role: 'user', content: 'a last fable' }],
            max_tokens: 4096, stream: true, // long enough to be still running after SIGTERM, even in Release
        });
        const iterator = stream[Symbol.asyncIterator]();
        const first = await iterator.next();
        assert.ok(!first.done);
        server.terminate();
        const readyz = await waitFor('/readyz to answer 503 while draining', async () => {
            const response = await fetch(`${server.origin}/readyz`);
            return response.status === 503 ? response.json() : null;
        }, { timeoutMs: 10_000 });
        assert.equal(readyz.status, 'draining');
        const { texts, finishes } = await readChatStream({ [Symbol.asyncIterator]: () => iterator });
        assert.deepEqual(finishes, ['length']);
        assert.equal(wordCount(texts[0]), 4096);
        const { code, signal } = await server.waitForExit();
        assert.equal(signal, null, server.describe());
        assert.equal(code, 0, server.describe());
    });
});

describe('modelpool_server with a queue of one (tight-config.json)', () => {
    let server;
    let side; // of the burst's square images: about 300 ms of painting each on this build (see before())
    const burstSize = 4; // the painter's one worker paints one, its queue holds one: two of four are refused
    const burst = (client) => Promise.allSettled(Array.from({ length: burstSize }, (_, i) => client.images.generate(
        { model: 'demo-painter', prompt: `burst ${i}`, size: `${side}x${side}`, response_format: 'b64_json' })));
    const refused = { route: '/v1/images/generations', status: '429' };

    before(async () => {
        server = await ServerProcess.start({ config: fileURLToPath(new URL('tight-config.json', import.meta.url)) });
        // Painting time grows with the pixels and differs 20-fold between a Release and a sanitizer build: size
        // the burst's images from a measured 256x256 one so that each takes about 300 ms. Then the four
        // requests of a burst arrive while the first is still painting (so two are refused), and retries after
        // Retry-After (1 s, twice) find the queue free again.
        const client = clientFor(server);
        let fastest = Infinity;
        for (let i = 0; i < 2; ++i) {
            const started = performance.now();
            await client.images.generate({ model: 'demo-painter', prompt: 'calibration', size: '256x256',
                response_format: 'b64_json' });
            fastest = Math.min(fastest, performance.now() - started);
        }
        side = Math.round(Math.min(2048, Math.max(128, 256 * Math.sqrt(300 / fastest))));
    });
    after(() => server?.kill());

    it('429: RateLimitError with Retry-After while the others succeed (no retries)', TEST, async () => {
        const refusedBefore = (await server.metrics()).get('modelpool_http_requests_total', refused);
        const outcomes = await burst(clientFor(server, { timeout: 60_000 }));
        const errors = outcomes.filter((o) => o.status === 'rejected').map((o) => o.reason);
        const images = outcomes.filter((o) => o.status === 'fulfilled').map((o) => o.value);
        assert.ok(errors.length >= 1, `at least one request is refused (${side}x${side} images)`);
        assert.ok(images.length >= 1, 'at least one request is served');
        for (const error of errors) {
            await expectApiError(Promise.reject(error), OpenAI.RateLimitError, 429,
                { type: 'rate_limit_error', code: 'overloaded' });
            assert.equal(error.headers.get('retry-after'), '1');
        }
        for (const image of images) {
            const png = readPng(Buffer.from(image.data[0].b64_json, 'base64'));
            assert.deepEqual([png.width, png.height], [side, side]);
        }
        const refusedAfter = (await server.metrics()).get('modelpool_http_requests_total', refused);
        assert.equal(refusedAfter - refusedBefore, errors.length, 'one 429 per error, none retried');
    });

    it("the client's default retries honour Retry-After and get the same burst through", TEST, async () => {
        const client = new OpenAI({ apiKey: 'not-checked', baseURL: server.baseURL, timeout: 60_000 });
        assert.equal(client.maxRetries, 2, 'the default');
        const refusedBefore = (await server.metrics()).get('modelpool_http_requests_total', refused);
        const started = Date.now();
        const outcomes = await burst(client);
        const elapsed = Date.now() - started;
        for (const outcome of outcomes) {
            assert.equal(outcome.status, 'fulfilled', `${outcome.reason} (${side}x${side} images)`);
        }
        const refusedDuring = (await server.metrics()).get('modelpool_http_requests_total', refused) - refusedBefore;
        assert.ok(refusedDuring >= 1, 'the server refused some attempts, which the client retried');
        assert.ok(elapsed >= 1000, `the retries waited Retry-After (1 s): the burst took ${elapsed} ms`);
    });

    it('SIGTERM: exit code 0', TEST, async () => {
        const { code, signal } = await server.stop();
        assert.equal(signal, null, server.describe());
        assert.equal(code, 0, server.describe());
    });
});

// tests/openai/support.mjs
//
// What client.test.mjs needs besides the openai client: a modelpool_server child process (started on an
// ephemeral port, waited for until /readyz says 200, stopped with SIGTERM), the server's Prometheus text read
// back as numbers, and PNG helpers (build a small PNG to send, check the ones the server returns). The PNG code
// uses node:zlib for deflate and computes CRC-32 by hand (zlib.crc32 needs Node 20.15; Debian 12 has 18).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { deflateSync, inflateSync } from 'node:zlib';
import { setTimeout as delay } from 'node:timers/promises';

// Bounds for an AddressSanitizer build too, which loads its models in a few seconds.
const LISTEN_TIMEOUT_MS = 60_000;
const READY_TIMEOUT_MS = 60_000;
// The drain waits for in-flight requests up to the server's grace (30 s by default), then exits.
const EXIT_TIMEOUT_MS = 45_000;
const STDERR_KEEP_BYTES = 64 * 1024;

/// Polls `condition` (async, returns a truthy value when met) every `intervalMs` until it holds or
/// `timeoutMs` passed; returns its value, or throws naming `what`.
export async function waitFor(what, condition, { timeoutMs = 10_000, intervalMs = 50 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            const value = await condition();
            if (value) {
                return value;
            }
        } catch (error) {
            last = error;
        }
        if (Date.now() >= deadline) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` +
                (last ? ` (last error: ${last.message})` : ''));
        }
        await delay(intervalMs);
    }
}

/// A running modelpool_server: `baseURL` (".../v1" for the client), `origin`, `stop()`.
export class ServerProcess {
    /// Starts the binary named by $MODELPOOL_SERVER on an ephemeral port and waits until /readyz answers 200.
    /// `config`: a --config file. Generated demo weights go to $MODELPOOL_CACHE_DIR, or a temporary directory
    /// removed by stop().
    static async start({ config } = {}) {
        const binary = process.env.MODELPOOL_SERVER;
        if (!binary) {
            throw new Error('set MODELPOOL_SERVER to the modelpool_server binary ' +
                '(e.g. build/release/bin/modelpool_server)');
        }
        let ownCacheDir;
        const cacheDir = process.env.MODELPOOL_CACHE_DIR ||
            (ownCacheDir = mkdtempSync(join(tmpdir(), 'modelpool-openai-')));
        const args = ['--port', '0', '--cache-dir', cacheDir, '--log-level', 'warn'];
        if (config) {
            args.push('--config', config);
        }
        const server = new ServerProcess(spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
            `${binary} ${args.join(' ')}`, ownCacheDir);
        try {
            server.origin = await server.#listening();
            server.baseURL = `${server.origin}/v1`;
            await waitFor('GET /readyz to answer 200', async () => {
                server.#throwIfExited();
                return (await fetch(`${server.origin}/readyz`)).status === 200;
            }, { timeoutMs: READY_TIMEOUT_MS, intervalMs: 100 });
        } catch (error) {
            server.kill();
            throw new Error(`${error.message}\n${server.describe()}`);
        }
        return server;
    }

    constructor(child, commandLine, ownCacheDir) {
        this.child = child;
        this.commandLine = commandLine;
        this.ownCacheDir = ownCacheDir;
        this.stderr = '';
        this.exit = new Promise((resolve) => {
            child.on('exit', (code, signal) => {
                this.exited = { code, signal };
                if (!this.stopping) { // a crash: every later test fails with a connection error, so say why now
                    console.error(`modelpool_server died unasked: ${this.describe()}`);
                }
                resolve(this.exited);
            });
        });
        child.stderr.setEncoding('utf8');
        child.stderr.on('data', (text) => {
            this.stderr = (this.stderr + text).slice(-STDERR_KEEP_BYTES);
        });
    }

    /// The command line, how it ended (if it did) and the end of its stderr, for failure messages.
    describe() {
        const status = this.exited ? `exited with code ${this.exited.code}, signal ${this.exited.signal}`
            : 'still running';
        return `modelpool_server (${this.commandLine}) ${status}; stderr:\n${this.stderr || '(empty)'}`;
    }

    /// Waits for "modelpool_server: listening on http://HOST:PORT" on stdout and returns the origin.
    async #listening() {
        const lines = createInterface({ input: this.child.stdout });
        let timer;
        try {
            return await new Promise((resolve, reject) => {
                timer = setTimeout(() => reject(new Error(
                    `no "listening on" line on stdout within ${LISTEN_TIMEOUT_MS} ms`)), LISTEN_TIMEOUT_MS);
                lines.on('line', (line) => {
                    const match = /^modelpool_server: listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
                    if (match) {
                        resolve(match[1]);
                    }
                });
                this.exit.then(() => reject(new Error('the server exited before listening')));
                this.child.on('error', reject);
            });
        } finally {
            clearTimeout(timer);
            // The interface stays open, so stdout is still read: a full pipe would block the server.
            lines.removeAllListeners('line');
        }
    }

    #throwIfExited() {
        if (this.exited) {
            throw new Error('the server exited');
        }
    }

    /// Sends SIGTERM (the drain begins) without waiting.
    terminate() {
        this.stopping = true;
        this.child.kill('SIGTERM');
    }

    /// Waits (bounded) for the process to end after terminate() and returns {code, signal}.
    async waitForExit() {
        let timer;
        const timeout = new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(
                `the server did not exit within ${EXIT_TIMEOUT_MS} ms of SIGTERM\n${this.describe()}`)),
            EXIT_TIMEOUT_MS);
        });
        try {
            return await Promise.race([this.exit, timeout]);
        } finally {
            clearTimeout(timer);
            this.#removeCacheDir();
        }
    }

    /// SIGTERM, then the exit status (the drain must end in exit code 0: an ASan leak report makes it
    /// non-zero).
    async stop() {
        if (!this.exited) {
            this.terminate();
        }
        return this.waitForExit();
    }

    /// Last-resort cleanup after a failed test: SIGKILL if still running.
    kill() {
        this.stopping = true;
        if (!this.exited) {
            this.child.kill('SIGKILL');
        }
        this.#removeCacheDir();
    }

    #removeCacheDir() {
        if (this.ownCacheDir) {
            rmSync(this.ownCacheDir, { recursive: true, force: true });
            this.ownCacheDir = undefined;
        }
    }

    /// GET /metrics, parsed (see parseMetrics).
    async metrics() {
        const response = await fetch(`${this.origin}/metrics`);
        if (response.status !== 200) {
            throw new Error(`GET /metrics answered ${response.status}`);
        }
        return parseMetrics(await response.text());
    }
}

/// Prometheus text as a lookup: get(name, {label: value}) is the sample with exactly those labels (0 when
/// absent, as a counter that has not been incremented yet is not exported).
export function parseMetrics(text) {
    const samples = new Map();
    for (const line of text.split('\n')) {
        const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
        if (!match) {
            continue;
        }
        const labels = {};
        for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
            labels[key] = value;
        }
        samples.set(sampleKey(match[1], labels), Number(match[3]));
    }
    return {
        text,
        get: (name, labels = {}) => samples.get(sampleKey(name, labels)) ?? 0,
        has: (name, labels = {}) => samples.has(sampleKey(name, labels)),
    };
}

function sampleKey(name, labels) {
    return `${name}{${Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(',')}}`;
}

// ---- PNG ---------------------------------------------------------------------------------------------------

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; ++k) {
        c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    }
    return c >>> 0;
});

/// CRC-32 as PNG uses it (ISO 3309).
export function crc32(bytes) {
    let crc = 0xffffffff;
    for (const byte of bytes) {
        crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
    }
    return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type, body) {
    const out = Buffer.alloc(12 + body.length);
    out.writeUInt32BE(body.length, 0);
    out.write(type, 4, 'latin1');
    body.copy(out, 8);
    out.writeUInt32BE(crc32(out.subarray(4, 8 + body.length)), 8 + body.length);
    return out;
}

/// An 8-bit RGB PNG of `width` x `height` whose pixel (x, y) is `color(x, y)` = [r, g, b]. The image data
/// uses stored (level 0) deflate blocks: the demo models' PNG decoder reads only those.
export function makePng(width, height, color) {
    const raw = Buffer.alloc((width * 3 + 1) * height);
    for (let y = 0; y < height; ++y) {
        const row = y * (width * 3 + 1); // filter byte 0 (None), then the pixels
        for (let x = 0; x < width; ++x) {
            raw.set(color(x, y), row + 1 + x * 3);
        }
    }
    const header = Buffer.alloc(13);
    header.writeUInt32BE(width, 0);
    header.writeUInt32BE(height, 4);
    header.set([8, 2, 0, 0, 0], 8); // depth 8, RGB, deflate, filter set 0, no interlace
    return Buffer.concat([PNG_SIGNATURE, pngChunk('IHDR', header),
        pngChunk('IDAT', deflateSync(raw, { level: 0 })), pngChunk('IEND', Buffer.alloc(0))]);
}

/// Checks `bytes` as a PNG (signature, every chunk's CRC, IHDR first, IEND last, image data inflating to the
/// size IHDR implies) and returns {width, height, channels, raw}; throws saying what is wrong.
export function readPng(bytes) {
    if (!bytes.subarray(0, 8).equals(PNG_SIGNATURE)) {
        throw new Error(`not a PNG: starts with ${bytes.subarray(0, 8).toString('hex')}`);
    }
    const chunks = [];
    for (let at = 8; at < bytes.length;) {
        if (bytes.length - at < 12) {
            throw new Error(`PNG truncated at byte ${at}`);
        }
        const length = bytes.readUInt32BE(at);
        const type = bytes.toString('latin1', at + 4, at + 8);
        if (at + 12 + length > bytes.length) {
            throw new Error(`PNG chunk ${type} runs past the end`);
        }
        const crc = bytes.readUInt32BE(at + 8 + length);
        if (crc32(bytes.subarray(at + 4, at + 8 + length)) !== crc) {
            throw new Error(`PNG chunk ${type} has a bad CRC`);
        }
        chunks.push({ type, body: bytes.subarray(at + 8, at + 8 + length) });
        at += 12 + length;
    }
    if (chunks[0]?.type !== 'IHDR' || chunks.at(-1)?.type !== 'IEND') {
        throw new Error(`PNG chunks are ${chunks.map((c) => c.type).join(',')}: IHDR must be first, IEND last`);
    }
    const ihdr = chunks[0].body;
    const width = ihdr.readUInt32BE(0);
    const height = ihdr.readUInt32BE(4);
    const channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[ihdr[9]];
    if (ihdr[8] !== 8 || channels === undefined) {
        throw new Error(`PNG depth ${ihdr[8]}, colour type ${ihdr[9]}: expected 8-bit grey, RGB or RGBA`);
    }
    const raw = inflateSync(Buffer.concat(chunks.filter((c) => c.type === 'IDAT').map((c) => c.body)));
    if (raw.length !== (width * channels + 1) * height) {
        throw new Error(`PNG image data inflates to ${raw.length} bytes, not ${(width * channels + 1) * height}`);
    }
    return { width, height, channels, raw };
}

/// A data URL for `bytes` of MIME type `type`.
export function dataUrl(type, bytes) {
    return `data:${type};base64,${bytes.toString('base64')}`;
}

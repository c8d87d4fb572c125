/** Starts and stops a real `geostream serve` process for integration tests. */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The repository root: the first folder above this file with `Cargo.toml` and `crates/`. */
export const REPO = ((): string => {
  let dir = here;
  for (;;) {
    if (existsSync(join(dir, "Cargo.toml")) && existsSync(join(dir, "crates"))) return dir;
    const up = resolve(dir, "..");
    if (up === dir) return resolve(here, "../../../..");
    dir = up;
  }
})();

/** The server binary: `GS_TEST_SERVER_BIN`, or the workspace's debug build. */
export function serverBinary(): string {
  const bin = process.env.GS_TEST_SERVER_BIN ?? join(REPO, "target/debug/geostream");
  if (!existsSync(bin)) {
    throw new Error(`no server binary at ${bin}: run \`cargo build -p geostream-server\` (scripts/test.sh does) or set GS_TEST_SERVER_BIN`);
  }
  return bin;
}

export class ServerProcess {
  private child: ChildProcess | null = null;
  port = 0;
  readonly dataDir: string;

  constructor(dataDir?: string) {
    this.dataDir = dataDir ?? mkdtempSync(join(tmpdir(), "geostream-js-"));
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the server (on the previous port when restarting) and waits until it listens. */
  async start(env: Record<string, string> = {}): Promise<void> {
    const listen = `127.0.0.1:${this.port}`;
    const child = spawn(serverBinary(), ["serve", "--listen", listen, "--data-dir", this.dataDir], {
      // geostream reads every GEOSTREAM_* variable as configuration, so test settings use GS_*.
      // No unready window at shutdown: tests restart servers and want them gone at once.
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", GEOSTREAM_SHUTDOWN__UNREADY_SECS: "0", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    let out = "";
    let err = "";
    let started = false;
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.length > 20000) out = out.slice(-10000);
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server did not start within 60 s:\n${out}\n${err}`)), 60_000);
      // The "listening on" line goes to stderr, with the logs.
      child.stderr!.on("data", (d: Buffer) => {
        err += d.toString();
        if (started) {
          if (err.length > 20000) err = err.slice(-10000);
          return;
        }
        const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(err);
        if (m) {
          started = true;
          clearTimeout(timer);
          this.port = Number(m[1]);
          resolve();
        }
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`the server exited with ${code}:\n${out}\n${err}`));
      });
    });
  }

  /** Stops the server gracefully (SIGTERM) and waits for it to exit. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      const kill = setTimeout(() => child.kill("SIGKILL"), 15_000);
      child.once("exit", () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill("SIGTERM");
    });
  }
}

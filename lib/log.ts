/**
 * Logging in klog's format, the one flanneld prints, so that existing greps
 * and log pipelines keep working:
 * `I1122 10:04:05.123456    4242 vxlan] message`. Severity letters are
 * I, W, E; `-v` levels gate detail (1: device decisions, 2: routes,
 * 4: every neighbour and FDB call).
 *
 * @module
 */

let verbosity = 0;
let sink: (line: string) => void = (line) => console.error(line);

/** Sets the `-v` level. */
export function setVerbosity(level: number): void {
  verbosity = level;
}

/** Current `-v` level. */
export function getVerbosity(): number {
  return verbosity;
}

/** Redirects log lines (tests). Returns the previous sink. */
export function setLogSink(
  next: (line: string) => void,
): (line: string) => void {
  const prev = sink;
  sink = next;
  return prev;
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, "0");
}

function emit(severity: "I" | "W" | "E", component: string, msg: string) {
  const d = new Date();
  const micros = pad(d.getMilliseconds() * 1000, 6);
  const stamp = `${pad(d.getMonth() + 1, 2)}${pad(d.getDate(), 2)} ${
    pad(d.getHours(), 2)
  }:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${micros}`;
  sink(
    `${severity}${stamp} ${String(Deno.pid).padStart(7)} ${component}] ${msg}`,
  );
}

/** A logger bound to a component name (`vxlan`, `kube`, `etcd`, `main`). */
export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  /** Logs at info severity when `-v` is at least `level`. */
  v(level: number, msg: string): void;
  /** Whether `v(level, ...)` would print; guards costly messages. */
  enabled(level: number): boolean;
}

/** Returns a logger for a component. */
export function logger(component: string): Logger {
  return {
    info: (msg) => emit("I", component, msg),
    warn: (msg) => emit("W", component, msg),
    error: (msg) => emit("E", component, msg),
    v: (level, msg) => {
      if (verbosity >= level) emit("I", component, msg);
    },
    enabled: (level) => verbosity >= level,
  };
}

/**
 * Preloaded into weft by bench/compare.ts's steady state with
 * `--malloc-probe`, never by the agent itself: every 10 s it reads glibc's
 * `mallinfo2()` (all arenas) and appends one JSON line to the file named
 * by `WEFT_BENCH_MALLOC_FILE`: the bytes malloc holds from the system
 * (`arena`, the main thread's brk heap and the other threads' arenas;
 * `hblkhd`, large blocks mmapped on their own) and the bytes in use
 * (`uordblks`), with V8's own view beside them. The benchmark reads it to
 * tell native memory in use from memory malloc keeps after a peak.
 *
 * @module
 */
const file = Deno.env.get("WEFT_BENCH_MALLOC_FILE");
if (file) {
  const libc = Deno.dlopen("libc.so.6", {
    mallinfo2: { parameters: [], result: { struct: Array(10).fill("usize") } },
  });
  const sample = () => {
    const raw = libc.symbols.mallinfo2() as Uint8Array<ArrayBuffer>;
    const f = new BigUint64Array(raw.buffer, raw.byteOffset, 10);
    const mem = Deno.memoryUsage();
    Deno.writeTextFileSync(
      file,
      JSON.stringify({
        t: Date.now(),
        arena: Number(f[0]),
        hblkhd: Number(f[4]),
        inUse: Number(f[7]),
        free: Number(f[8]),
        v8HeapTotal: mem.heapTotal,
        v8HeapUsed: mem.heapUsed,
        v8External: mem.external,
      }) + "\n",
      { append: true },
    );
  };
  // Unref'd: the probe never keeps the agent alive.
  Deno.unrefTimer(setInterval(sample, 10_000));
  sample();
}

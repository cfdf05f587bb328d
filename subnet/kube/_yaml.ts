/**
 * The YAML parser, loaded only for a kubeconfig that is not JSON.
 *
 * @module
 */
import process from "node:process";
import { parse } from "yaml";

/**
 * `yaml.parse` without environment access. npm:yaml reads two debug
 * switches (`LOG_TOKENS`, `LOG_STREAM`) from `process.env` on every token,
 * which in Deno needs `--allow-env` and would make this pure parser depend
 * on permissions. The call is synchronous, so swapping `process.env` for
 * an empty object around it is invisible to other code.
 */
export function parseYaml(text: string): unknown {
  const desc = Object.getOwnPropertyDescriptor(process, "env");
  if (!desc?.configurable) return parse(text);
  Object.defineProperty(process, "env", {
    configurable: true,
    enumerable: desc.enumerable ?? true,
    writable: true,
    value: {},
  });
  try {
    return parse(text);
  } finally {
    Object.defineProperty(process, "env", desc);
  }
}

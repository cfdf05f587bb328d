export const VERSION = "v0.1.0";

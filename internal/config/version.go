package config

// Version is stamped at build time with -ldflags "-X ...config.Version=...".
var Version = "dev"

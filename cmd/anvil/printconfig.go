package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/anvilproject/anvil/config"
)

// printConfig writes the effective configuration, one setting a line, with
// where each value came from (flag, env, file or default) and the flag and
// variable that set it. Secrets print as "(set)".
func printConfig(w io.Writer, v *viper.Viper, fs *pflag.FlagSet) error {
	if f := v.ConfigFileUsed(); f != "" {
		fmt.Fprintf(w, "# configuration file: %s\n", f)
	} else {
		fmt.Fprintln(w, "# configuration file: none")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE\tFLAG\tENV")
	for _, s := range config.Settings {
		val := fmt.Sprint(v.Get(s.Key))
		if s.Secret {
			if val != "" {
				val = "(set)"
			}
		}
		if val == "" {
			val = `""`
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t--%s\t%s\n", s.Key, val, config.Source(v, fs, s.Key), s.Flag, s.Env())
	}
	return tw.Flush()
}

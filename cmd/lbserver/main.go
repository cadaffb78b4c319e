// Command lbserver is the Lookaside balancer: a grpclb server
// (grpc.lb.v1.LoadBalancer) that finds backends in Consul, or in a static
// list, and streams ordered server lists to grpclb clients; it serves
// gRPC's xDS clients too (-xds). `lbserver xds-bootstrap -server HOST:PORT`
// prints the bootstrap those clients read.
//
// It only parses the config file and flags into a config.Config and runs
// a replica (package replica) with it; run it with -h for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/replica"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go onSignals(sigs, cancel, os.Stderr, os.Exit)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	os.Exit(runWith(ctx, os.Args[1:], os.Stdout, os.Stderr, hups))
}

// onSignals turns the first SIGINT or SIGTERM into cancel, which starts
// the shutdown bounded by -shutdown-timeout, and a second one into exit(1)
// at once, with a line on stderr. It blocks until the second signal.
func onSignals(sigs <-chan os.Signal, cancel func(), stderr io.Writer, exit func(int)) {
	<-sigs
	cancel()
	s := <-sigs
	fmt.Fprintf(stderr, "lbserver: second signal (%v) during shutdown: exiting at once\n", s)
	exit(1)
}

// errHelp is returned by load for -h.
var errHelp = flag.ErrHelp

// load builds the configuration: the defaults, the -config file on top,
// the flags given on top of that. It does not validate.
func load(args []string, stderr io.Writer) (config.Config, command, error) {
	var cmd command
	cfg := config.Default()
	if path := configFlag(args); path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return cfg, cmd, err
		}
	}
	// The flags given win over the file: parse them onto it.
	fs := flag.NewFlagSet("lbserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindFlags(fs, &cfg, &cmd)
	fs.Usage = func() {
		if helpAsked(args) {
			usage(fs, stderr)
		} else {
			fmt.Fprintln(stderr, "lbserver -h lists the flags")
		}
	}
	if err := fs.Parse(args); err != nil {
		return cfg, cmd, err
	}
	if fs.NArg() > 0 {
		return cfg, cmd, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	// A TLS file given by flag turns that client's TLS on, as setting it
	// in the file's section with enabled: true does.
	fs.Visit(func(f *flag.Flag) {
		switch {
		case strings.HasPrefix(f.Name, "orca-tls-"):
			cfg.LoadReports.TLS.Enabled = true
		case f.Name == "consul-ca-file" || f.Name == "consul-cert-file" || f.Name == "consul-key-file" || f.Name == "consul-tls-server-name":
			cfg.Consul.TLS.Enabled = true
		}
	})
	return cfg, cmd, nil
}

// helpAsked reports whether args ask for -h (the flag package calls
// Usage for it and for every bad flag alike).
func helpAsked(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		switch strings.TrimLeft(a, "-") {
		case "h", "help":
			return strings.HasPrefix(a, "-")
		}
	}
	return false
}

// configFlag returns -config's value in args, which must be known before
// the other flags are parsed onto the file's values: a first parse with
// every flag defined (onto a scratch config, errors left to the real one)
// finds it wherever it is.
func configFlag(args []string) string {
	var cmd command
	scratch := config.Default()
	fs := flag.NewFlagSet("lbserver", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	bindFlags(fs, &scratch, &cmd)
	fs.Parse(args) // errors: the real parse reports them
	return cmd.configFile
}

// run is main without the process and its signals: it returns the exit
// code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runWith(ctx, args, stdout, stderr, nil)
}

// runWith is run where each value received on hups reloads the
// configuration.
func runWith(ctx context.Context, args []string, stdout, stderr io.Writer, hups <-chan os.Signal) int {
	if len(args) > 0 && args[0] == bootstrapCommand {
		return runBootstrap(args[1:], stdout, stderr)
	}
	cfg, cmd, err := load(args, stderr)
	if errors.Is(err, errHelp) {
		return 0
	}
	if err == nil {
		err = cfg.Validate()
	}
	if cmd.validate {
		if err != nil {
			fmt.Fprintf(stderr, "lbserver: invalid configuration:\n%v\n", err)
			return 1
		}
		if cmd.printConfig {
			fmt.Fprint(stdout, cfg.String())
		}
		fmt.Fprintln(stdout, "configuration OK")
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	log, level, err := replica.NewLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	r, err := replica.New(cfg, replica.Options{Logger: log, Level: level, Listening: func(a replica.Addrs) {
		fmt.Fprintf(stdout, "lbserver listening on %s\n", a.Balancer)
		if a.Admin != nil {
			fmt.Fprintf(stdout, "lbserver admin on http://%s/\n", a.Admin)
		}
	}})
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for {
		select {
		case err := <-done:
			if err != nil {
				log.Error("stopped", "err", err)
				return 1
			}
			return 0
		case <-hups:
			next, _, err := load(args, io.Discard)
			if err == nil {
				err = r.Reload(next)
			}
			if err != nil {
				log.Error("reload refused; the running configuration stays", "config", cmd.configFile, "err", err)
				continue
			}
			log.Info("reloaded", "config", cmd.configFile)
		}
	}
}

package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/anvilproject/anvil/service"
)

// metrics is the daemon's Prometheus registry. Volume and session figures
// are read from the live state at scrape time (a Collector), so there is
// nothing to keep in sync when volumes come and go.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

var (
	descVolumeSize = prometheus.NewDesc("anvil_volume_size_bytes", "Size of the volume.", []string{"volume"}, nil)
	descOps        = prometheus.NewDesc("anvil_volume_ops_total", "I/O operations completed by the engine, by kind (read, write, flush, unmap).", []string{"volume", "op"}, nil)
	descBytes      = prometheus.NewDesc("anvil_volume_bytes_total", "Bytes transferred (read, write) or deallocated (unmap).", []string{"volume", "op"}, nil)
	descErrors     = prometheus.NewDesc("anvil_volume_errors_total", "I/O operations that failed.", []string{"volume", "op"}, nil)
	descLatency    = prometheus.NewDesc("anvil_volume_op_duration_seconds", "Engine latency of I/O operations. Reads are timed on a sample (the REST stats give the rate as sample_every): _count counts the timed operations, anvil_volume_ops_total all of them.", []string{"volume", "op"}, nil)
	descDirty      = prometheus.NewDesc("anvil_volume_dirty_bytes", "Acknowledged writes not yet durable.", []string{"volume"}, nil)
	descMapped     = prometheus.NewDesc("anvil_volume_mappings", "Targets mapping the volume.", []string{"volume"}, nil)
	descSpaceUsed  = prometheus.NewDesc("anvil_datadir_used_ratio", "Share of the data directory's file system in use, as of the last space check.", nil, nil)
	descSpaceWarn  = prometheus.NewDesc("anvil_space_soft_threshold_reached", "1 while the data directory's file system is at or past volume.space_warn_percent.", nil, nil)
	descSpaceCross = prometheus.NewDesc("anvil_space_soft_threshold_crossings_total", "Times the data directory's file system passed volume.space_warn_percent (each raised the thin provisioning soft threshold unit attention).", nil, nil)
	descState      = prometheus.NewDesc("anvil_volume_state", "1 for the volume's state (online, degraded: served read-only after an uncertain recovery, offline: files do not match the catalog), 0 for the others.", []string{"volume", "state"}, nil)
	descSessions   = prometheus.NewDesc("anvil_iscsi_sessions", "Logged-in iSCSI sessions, by target (empty for discovery).", []string{"target"}, nil)
	descInFlight   = prometheus.NewDesc("anvil_iscsi_commands_in_flight", "SCSI commands being executed, by target.", []string{"target"}, nil)
	descTargets    = prometheus.NewDesc("anvil_targets", "Configured targets.", nil, nil)

	// The NVMe/TCP front end's counters.
	descNVMeCtrls    = prometheus.NewDesc("anvil_nvme_controllers", "Live NVMe controllers, discovery controllers included.", nil, nil)
	descNVMeQueues   = prometheus.NewDesc("anvil_nvme_queues", "Live NVMe queues (admin and I/O) of all controllers.", nil, nil)
	descNVMeCommands = prometheus.NewDesc("anvil_nvme_commands_total", "NVMe commands executed, by class (admin, io, fabrics).", []string{"class"}, nil)
	descNVMeErrors   = prometheus.NewDesc("anvil_nvme_errors_total", "NVMe commands completed with an error status, by status type and code.", []string{"status"}, nil)
	descSubsystems   = prometheus.NewDesc("anvil_nvme_subsystems", "Configured NVMe subsystems.", nil, nil)

	// The caching engine's own counters.
	descEpochs    = prometheus.NewDesc("anvil_engine_epochs_total", "Epochs the engine committed with data.", []string{"volume"}, nil)
	descUndo      = prometheus.NewDesc("anvil_engine_undo_bytes_total", "Bytes appended to the undo log.", []string{"volume"}, nil)
	descCacheHits = prometheus.NewDesc("anvil_engine_cache_lookups_total", "Chunk cache lookups on read, by result.", []string{"volume", "result"}, nil)
	descCommitErr = prometheus.NewDesc("anvil_engine_commit_errors_total", "Epoch commits that failed.", []string{"volume"}, nil)
	descCommitLat = prometheus.NewDesc("anvil_engine_commit_duration_seconds", "Time to commit one epoch.", []string{"volume"}, nil)
)

func newMetrics(s *server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "anvil_api_requests_total", Help: "REST API requests by route and status code.",
		}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "anvil_api_request_duration_seconds", Help: "REST API request latency by route.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method", "route"}),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.latency,
		liveCollector{s},
	)
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// instrument counts every request by its route pattern (not the raw path,
// which would make one series per volume name).
func (s *server) instrument(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		status := c.Response().Status
		if err != nil {
			status, _ = statusOf(err)
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		method := c.Request().Method
		s.metrics.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
		s.metrics.latency.WithLabelValues(method, route).Observe(time.Since(start).Seconds())
		return err
	}
}

// liveCollector reports the live state at scrape time.
type liveCollector struct{ s *server }

func (l liveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVolumeSize, descOps, descBytes, descErrors, descLatency, descDirty, descMapped, descSessions, descInFlight, descTargets,
		descNVMeCtrls, descNVMeQueues, descNVMeCommands, descNVMeErrors, descSubsystems,
		descState, descSpaceUsed, descSpaceWarn, descSpaceCross, descEpochs, descUndo, descCacheHits, descCommitErr, descCommitLat} {
		ch <- d
	}
}

func (l liveCollector) Collect(ch chan<- prometheus.Metric) {
	s := l.s
	if sp := s.svc.Space(); sp.SizeBytes > 0 {
		ch <- prometheus.MustNewConstMetric(descSpaceUsed, prometheus.GaugeValue, float64(sp.SizeBytes-sp.FreeBytes)/float64(sp.SizeBytes))
		above := 0.0
		if sp.Above {
			above = 1
		}
		ch <- prometheus.MustNewConstMetric(descSpaceWarn, prometheus.GaugeValue, above)
		ch <- prometheus.MustNewConstMetric(descSpaceCross, prometheus.CounterValue, float64(sp.Crossings))
	}
	for _, v := range s.svc.Volumes() {
		ch <- prometheus.MustNewConstMetric(descVolumeSize, prometheus.GaugeValue, float64(v.SizeBytes), v.Name)
		ch <- prometheus.MustNewConstMetric(descMapped, prometheus.GaugeValue, float64(len(s.svc.MappedBy(v.Name))), v.Name)
		if state, _, err := s.svc.VolumeState(v.Name); err == nil {
			for _, st := range []string{service.StateOnline, service.StateDegraded, service.StateOffline} {
				val := 0.0
				if st == state {
					val = 1
				}
				ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, val, v.Name, st)
			}
		}
		st := s.statsOf(v.Name)
		if st == nil {
			continue
		}
		for _, op := range []struct {
			name string
			o    service.OpStats
		}{{"read", st.Read}, {"write", st.Write}, {"flush", st.Flush}, {"unmap", st.Unmap}} {
			ch <- prometheus.MustNewConstMetric(descOps, prometheus.CounterValue, float64(op.o.Ops), v.Name, op.name)
			ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(op.o.Errors), v.Name, op.name)
			if op.name != "flush" {
				ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(op.o.Bytes), v.Name, op.name)
			}
			ch <- prometheus.MustNewConstHistogram(descLatency, op.o.Latency.Count, op.o.Latency.SumSeconds, promBuckets(op.o.Latency), v.Name, op.name)
		}
		if st.DirtyBytes != nil {
			ch <- prometheus.MustNewConstMetric(descDirty, prometheus.GaugeValue, float64(*st.DirtyBytes), v.Name)
		}
		if e := st.Engine; e != nil {
			ch <- prometheus.MustNewConstMetric(descEpochs, prometheus.CounterValue, float64(e.Epochs), v.Name)
			ch <- prometheus.MustNewConstMetric(descUndo, prometheus.CounterValue, float64(e.UndoBytes), v.Name)
			ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(e.CacheHits), v.Name, "hit")
			ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(e.CacheMisses), v.Name, "miss")
			ch <- prometheus.MustNewConstMetric(descCommitErr, prometheus.CounterValue, float64(e.CommitErrors), v.Name)
			ch <- prometheus.MustNewConstHistogram(descCommitLat, e.CommitCount, e.CommitSeconds, promBuckets(e.commit), v.Name)
		}
	}
	targets := s.svc.ListTargets()
	ch <- prometheus.MustNewConstMetric(descTargets, prometheus.GaugeValue, float64(len(targets)))
	sessions := map[string]int{}
	inflight := map[string]int{}
	for _, t := range targets {
		sessions[t.IQN] = 0
		inflight[t.IQN] = 0
	}
	for _, si := range s.sessions.Sessions() {
		sessions[si.Target]++
		inflight[si.Target] += si.InFlight
	}
	for t, n := range sessions {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n), t)
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(inflight[t]), t)
	}
	ch <- prometheus.MustNewConstMetric(descSubsystems, prometheus.GaugeValue, float64(len(s.svc.Subsystems())))
	nst := s.nvme.Stats()
	ch <- prometheus.MustNewConstMetric(descNVMeCtrls, prometheus.GaugeValue, float64(nst.Controllers))
	ch <- prometheus.MustNewConstMetric(descNVMeQueues, prometheus.GaugeValue, float64(nst.Queues))
	for _, class := range []string{"admin", "io", "fabrics"} {
		ch <- prometheus.MustNewConstMetric(descNVMeCommands, prometheus.CounterValue, float64(nst.Commands[class]), class)
	}
	for status, n := range nst.Errors {
		ch <- prometheus.MustNewConstMetric(descNVMeErrors, prometheus.CounterValue, float64(n), status)
	}
}

// promBuckets turns a latency histogram (the engine's one layout,
// service.LatencyBuckets, with an open bucket last) into Prometheus's
// cumulative buckets. Every latency histogram Anvil exports goes through
// it, so they all share one set of bounds.
func promBuckets(h service.Histogram) map[float64]uint64 {
	out := make(map[float64]uint64, len(service.LatencyBuckets))
	var cum uint64
	for i, le := range service.LatencyBuckets {
		if i < len(h.Counts) {
			cum += h.Counts[i]
		}
		out[le] = cum
	}
	return out
}

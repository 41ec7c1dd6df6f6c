#include "metrics.hpp"

#include <cstdio>

namespace connredir::proxy {

std::string_view kind_name(ErrorKind k) {
  switch (k) {
    case ErrorKind::None:
      return "";
    case ErrorKind::NotRedirected:
      return "not_redirected";
    case ErrorKind::Records:
      return "records";
    case ErrorKind::NoDestination:
      return "no_destination";
    case ErrorKind::ConnectRefused:
      return "connect_refused";
    case ErrorKind::ConnectFailed:
      return "connect_failed";
    case ErrorKind::ConnectTimeout:
      return "connect_timeout";
    case ErrorKind::ClientError:
      return "client_error";
    case ErrorKind::ServerError:
      return "server_error";
    case ErrorKind::IdleTimeout:
      return "idle_timeout";
    case ErrorKind::Resources:
      return "resources";
    case ErrorKind::Internal:
      return "internal";
    case ErrorKind::Shutdown:
      return "shutdown";
  }
  return "internal";
}

void ProxyMetrics::observe_setup(uint64_t ns) {
  size_t i = 0;
  while (i < kSetupBucketsNs.size() && ns > kSetupBucketsNs[i]) ++i;
  bump(setup_buckets_[i], 1);
  bump(setup_sum_ns_, ns);
}

namespace {

// Label values: backslash, double quote and newline escaped.
std::string escape(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char ch : v) {
    if (ch == '\\') {
      out += "\\\\";
    } else if (ch == '"') {
      out += "\\\"";
    } else if (ch == '\n') {
      out += "\\n";
    } else {
      out += ch;
    }
  }
  return out;
}

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, std::string_view name, std::string_view labels, uint64_t v) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += std::to_string(v);
  out += '\n';
}

// Nanoseconds as exact decimal seconds.
std::string seconds(uint64_t ns) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%llu.%09llu", static_cast<unsigned long long>(ns / 1000000000),
                static_cast<unsigned long long>(ns % 1000000000));
  return buf;
}

// Bucket bounds in seconds, the way the le label shows them.
std::string bound(uint64_t ns) {
  std::string s = seconds(ns);
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

std::string format_metrics(const ProxyMetrics& m, const MetricsLabels& labels) {
  std::string out;
  out.reserve(4096);
  family(out, "connredir_proxy_info", "gauge",
         "Always 1; the labels name this proxy (--name) and its version.");
  sample(out, "connredir_proxy_info",
         "name=\"" + escape(labels.name) + "\",version=\"" + escape(labels.version) + "\"", 1);
  family(out, "connredir_proxy_listen_info", "gauge",
         "Always 1 per address the proxy accepts redirected connections on.");
  for (const auto& a : labels.listen)
    sample(out, "connredir_proxy_listen_info", "address=\"" + escape(a) + "\"", 1);

  family(out, "connredir_proxy_flows_total", "counter",
         "Connections accepted (each is one flow, whatever its result).");
  sample(out, "connredir_proxy_flows_total", "", m.flows_total());
  family(out, "connredir_proxy_flows_active", "gauge",
         "Flows open now: connecting onward or relaying.");
  sample(out, "connredir_proxy_flows_active", "", m.flows_active());
  family(out, "connredir_proxy_flow_errors_total", "counter",
         "Flows that ended other than ok, by kind of failure (the flow log's result, grouped).");
  for (size_t k = 1; k < kErrorKinds; ++k) {
    const auto kind = static_cast<ErrorKind>(k);
    sample(out, "connredir_proxy_flow_errors_total",
           "kind=\"" + std::string(kind_name(kind)) + "\"", m.errors(kind));
  }
  family(out, "connredir_proxy_relayed_bytes_total", "counter",
         "Bytes delivered, by direction (client_to_server: to the destination).");
  sample(out, "connredir_proxy_relayed_bytes_total", "direction=\"client_to_server\"",
         m.bytes_up());
  sample(out, "connredir_proxy_relayed_bytes_total", "direction=\"server_to_client\"",
         m.bytes_down());

  family(out, "connredir_proxy_flow_setup_seconds", "histogram",
         "Time from accepting a connection to its onward connection being established.");
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= kSetupBucketsNs.size(); ++i) {
    cumulative += m.setup_bucket(i);
    const std::string le = i < kSetupBucketsNs.size() ? bound(kSetupBucketsNs[i]) : "+Inf";
    sample(out, "connredir_proxy_flow_setup_seconds_bucket", "le=\"" + le + "\"", cumulative);
  }
  out += "connredir_proxy_flow_setup_seconds_sum " + seconds(m.setup_sum_ns()) + "\n";
  sample(out, "connredir_proxy_flow_setup_seconds_count", "", cumulative);
  return out;
}

}  // namespace connredir::proxy

// The pieces of the HTTP layer that need no model: Prometheus rendering, OpenAI response
// bodies, and noticing a client leave (or only half-close) its connection.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "serve/connection_watch.h"
#include "serve/metrics.h"
#include "serve/openai_json.h"

namespace duo::serve {
namespace {

// Value of one sample line ("name{labels} value") in a Prometheus text page.
double sample(const std::string& page, const std::string& series) {
  const size_t at = page.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(page.substr(at + series.size() + 2));
}

TEST(Metrics, RendersCountersAndGauges) {
  Metrics m;
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 200);
  m.count_request("other", 404);
  m.count_rejected("queue_full");
  m.count_finished("stop");
  m.record_step(2, 100, 3, 0.5);
  m.record_step(5, 0, 4, 0.25);
  SchedulerGauges g;
  g.active = 3;
  g.queued = 2;
  g.kv_retrieval = 1000;
  g.kv_streaming = 24;
  g.kv_reserved = 4096;
  g.kv_budget = 1 << 20;
  g.last_batch = 3;
  g.pool_used = 3 << 20, g.pool_idle = 1 << 20;
  m.set_gauges(g);
  m.observe_kv(5000);
  const std::string page = m.render();
  EXPECT_EQ(sample(page, R"(duo_requests_total{endpoint="/v1/completions",status="200"})"), 2);
  EXPECT_EQ(sample(page, R"(duo_requests_total{endpoint="other",status="404"})"), 1);
  EXPECT_EQ(sample(page, R"(duo_requests_rejected_total{reason="queue_full"})"), 1);
  EXPECT_EQ(sample(page, R"(duo_requests_finished_total{reason="stop"})"), 1);
  EXPECT_EQ(sample(page, "duo_prompt_tokens_total"), 100);
  EXPECT_EQ(sample(page, "duo_generated_tokens_total"), 7);
  EXPECT_EQ(sample(page, "duo_batch_steps_total"), 2);
  EXPECT_DOUBLE_EQ(sample(page, "duo_batch_step_seconds_total"), 0.75);
  // Fresh server: the rate is over its first second.
  EXPECT_DOUBLE_EQ(sample(page, "duo_generation_tokens_per_second"), 7);
  EXPECT_EQ(sample(page, R"(duo_kv_bytes{kind="retrieval"})"), 1000);
  EXPECT_EQ(sample(page, R"(duo_kv_bytes{kind="streaming"})"), 24);
  EXPECT_EQ(sample(page, "duo_kv_bytes_peak"), 5000);
  EXPECT_EQ(sample(page, "duo_kv_reserved_bytes"), 4096);
  EXPECT_EQ(sample(page, "duo_kv_budget_bytes"), 1 << 20);
  EXPECT_EQ(sample(page, R"(duo_kv_pool_bytes{state="used"})"), 3 << 20);
  EXPECT_EQ(sample(page, R"(duo_kv_pool_bytes{state="free"})"), 1 << 20);
  EXPECT_EQ(sample(page, "duo_queue_depth"), 2);
  EXPECT_EQ(sample(page, "duo_active_sequences"), 3);
  // Every sample has its HELP and TYPE.
  EXPECT_NE(page.find("# TYPE duo_requests_total counter\n"), std::string::npos);
  EXPECT_NE(page.find("# TYPE duo_queue_depth gauge\n"), std::string::npos);
}

TEST(Metrics, RendersLatencyAndBatchHistograms) {
  Metrics m;
  m.observe_first_token(0.003);  // le 0.005
  m.observe_first_token(0.2);    // le 0.25
  m.observe_first_token(100);    // beyond the last bound: only +Inf
  m.observe_inter_token(0.01);   // exactly on a bound counts in it ("le")
  m.record_step(3, 0, 3, 0.1);
  m.record_step(1, 10, 0, 0.1);
  m.record_step(9, 0, 9, 0.1);
  const std::string page = m.render();
  const std::string t = "duo_time_to_first_token_seconds";
  EXPECT_NE(page.find("# TYPE " + t + " histogram\n"), std::string::npos);
  EXPECT_EQ(sample(page, t + R"(_bucket{le="0.005"})"), 1);
  EXPECT_EQ(sample(page, t + R"(_bucket{le="0.1"})"), 1);  // cumulative
  EXPECT_EQ(sample(page, t + R"(_bucket{le="0.25"})"), 2);
  EXPECT_EQ(sample(page, t + R"(_bucket{le="60"})"), 2);
  EXPECT_EQ(sample(page, t + R"(_bucket{le="+Inf"})"), 3);
  EXPECT_EQ(sample(page, t + "_count"), 3);
  EXPECT_DOUBLE_EQ(sample(page, t + "_sum"), 100.203);
  EXPECT_EQ(sample(page, R"(duo_inter_token_latency_seconds_bucket{le="0.005"})"), 0);
  EXPECT_EQ(sample(page, R"(duo_inter_token_latency_seconds_bucket{le="0.01"})"), 1);
  EXPECT_EQ(sample(page, "duo_inter_token_latency_seconds_count"), 1);
  EXPECT_EQ(sample(page, R"(duo_batch_step_sequences_bucket{le="1"})"), 1);
  EXPECT_EQ(sample(page, R"(duo_batch_step_sequences_bucket{le="4"})"), 2);
  EXPECT_EQ(sample(page, R"(duo_batch_step_sequences_bucket{le="16"})"), 3);
  EXPECT_EQ(sample(page, "duo_batch_step_sequences_sum"), 13);
  EXPECT_EQ(sample(page, "duo_batch_step_sequences_count"), 3);
}

TEST(Metrics, EscapesLabelValues) {
  Metrics m;
  m.count_rejected("a\"b\\c\nd");
  EXPECT_NE(m.render().find(R"(reason="a\"b\\c\nd")"), std::string::npos);
}

TEST(OpenAIJson, CompletionAndChunks) {
  ResponseMeta meta{"cmpl-1", 1700000000, "smol"};
  const auto c = completion_body(Endpoint::Completions, meta, "hi", FinishReason::Length, 5, 2);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "hi");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["usage"]["total_tokens"], 7);
  const auto h = completion_body(Endpoint::ChatCompletions, meta, "yo", FinishReason::Stop, 1, 1);
  EXPECT_EQ(h["object"], "chat.completion");
  EXPECT_EQ(h["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(h["choices"][0]["message"]["content"], "yo");
  EXPECT_EQ(h["choices"][0]["finish_reason"], "stop");
  const auto piece = stream_chunk(Endpoint::ChatCompletions, meta, "x", FinishReason::None);
  EXPECT_EQ(piece["object"], "chat.completion.chunk");
  EXPECT_EQ(piece["choices"][0]["delta"]["content"], "x");
  EXPECT_TRUE(piece["choices"][0]["finish_reason"].is_null());
  const auto last = stream_chunk(Endpoint::ChatCompletions, meta, "", FinishReason::Stop);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  const auto u = usage_chunk(Endpoint::Completions, meta, 3, 4);
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["completion_tokens"], 4);
  EXPECT_EQ(new_response_meta(Endpoint::ChatCompletions, "m").id.rfind("chatcmpl-", 0), 0u);
}

TEST(OpenAIJson, InvalidUtf8IsReplacedNotThrown) {
  // A generation cut inside a multi-byte character must still serialize.
  const nlohmann::json j = {{"text", std::string("ok \xE2\x82")}};
  std::string s;
  ASSERT_NO_THROW(s = dump(j));
  EXPECT_NE(s.find("ok \xEF\xBF\xBD"), std::string::npos);
  EXPECT_EQ(sse_event({{"a", 1}}), "data: {\"a\":1}\n\n");
}

// A connected loopback pair: `client` and the server side `conn`.
struct LoopbackPair {
  int client = -1, conn = -1;
  LoopbackPair() {
    const int lsock = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(lsock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(lsock, 1), 0);
    socklen_t len = sizeof(addr);
    getsockname(lsock, reinterpret_cast<sockaddr*>(&addr), &len);
    client = socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_EQ(connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    conn = accept(lsock, nullptr, nullptr);
    close(lsock);
  }
  ~LoopbackPair() {
    if (client >= 0) close(client);
    close(conn);
  }
};

// Calls peer_gone for up to a second; whether it ever said yes.
bool becomes_gone(ConnectionWatch& w, bool may_probe) {
  for (int i = 0; i < 100; ++i) {
    if (w.peer_gone(may_probe)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(ConnectionWatch, SeesThePeerLeave) {
  LoopbackPair p;
  ConnectionWatch watch(p.conn, /*http11=*/true);
  EXPECT_FALSE(watch.peer_gone(true));
  // Pipelined data from a live client is not a departure.
  ASSERT_EQ(send(p.client, "GET", 3, 0), 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(watch.peer_gone(true));
  close(p.client);
  p.client = -1;
  EXPECT_TRUE(becomes_gone(watch, true));
  ConnectionWatch nobody(-1, true);
  EXPECT_FALSE(nobody.peer_gone(true));
}

TEST(ConnectionWatch, HalfClosedClientIsStillThere) {
  // The client sent its request and shut down its sending side: it still reads the answer.
  LoopbackPair p;
  ConnectionWatch watch(p.conn, /*http11=*/true);
  ASSERT_EQ(shutdown(p.client, SHUT_WR), 0);
  EXPECT_FALSE(becomes_gone(watch, true));
  // It was asked once, with an interim answer any HTTP/1.1 client skips.
  char buf[256] = {};
  timeval tv{1, 0};
  setsockopt(p.client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const ssize_t n = recv(p.client, buf, sizeof(buf), 0);
  EXPECT_EQ(std::string(buf, n > 0 ? size_t(n) : 0), "HTTP/1.1 100 Continue\r\n\r\n");
  // Once it closes for good, the probe's reset shows.
  close(p.client);
  p.client = -1;
  ConnectionWatch again(p.conn, true);
  EXPECT_TRUE(becomes_gone(again, true));
}

TEST(ConnectionWatch, NoProbeForHttp10OrAfterTheAnswerBegan) {
  LoopbackPair p;
  ASSERT_EQ(shutdown(p.client, SHUT_WR), 0);
  ConnectionWatch old(p.conn, /*http11=*/false);
  EXPECT_FALSE(becomes_gone(old, true));
  ConnectionWatch streaming(p.conn, /*http11=*/true);
  EXPECT_FALSE(becomes_gone(streaming, false));
  char buf[64];
  EXPECT_EQ(recv(p.client, buf, sizeof(buf), MSG_DONTWAIT), -1);  // nothing was sent
}

}  // namespace
}  // namespace duo::serve

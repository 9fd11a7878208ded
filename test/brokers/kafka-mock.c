/* kafka-mock [BROKERS] [TOPIC:PARTITIONS...]: prints the bootstrap list, then answers ok/error to stdin commands
 * until EOF or SIGTERM: "err APIKEY CODE..." (next APIKEY requests fail with CODEs; 0 = Produce), "down ID", "up ID" */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void on_signal(int sig) { (void)sig; _exit(0); } /* any thread may get it */
int main(int argc, char **argv) {
  char err[512], line[1024], *cmd, *arg, *c;
  int brokers = argc > 1 ? atoi(argv[1]) : 3;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  rd_kafka_mock_cluster_t *mc = rk ? rd_kafka_mock_cluster_new(rk, brokers) : NULL;
  if (!mc) { fprintf(stderr, "kafka-mock: %s\n", rk ? "no mock cluster" : err); return 1; }
  for (int i = 2; i < argc; i++) {
    char *colon = strrchr(argv[i], ':');
    if (colon) *colon = '\0';
    rd_kafka_mock_topic_create(mc, argv[i], colon ? atoi(colon + 1) : 1, brokers < 3 ? brokers : 3);
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc)); fflush(stdout);
  while (fgets(line, sizeof line, stdin)) {
    if (!(cmd = strtok(line, " \t\r\n"))) continue;
    int ok = (arg = strtok(NULL, " \t\r\n")) != NULL;
    if (ok && !strcmp(cmd, "err")) {
      rd_kafka_resp_err_t codes[64]; size_t n = 0;
      while (n < 64 && (c = strtok(NULL, " \t\r\n"))) codes[n++] = (rd_kafka_resp_err_t)atoi(c);
      rd_kafka_mock_push_request_errors_array(mc, (int16_t)atoi(arg), n, codes);
    } else if (ok && !strcmp(cmd, "down")) ok = !rd_kafka_mock_broker_set_down(mc, atoi(arg));
    else if (ok && !strcmp(cmd, "up")) ok = !rd_kafka_mock_broker_set_up(mc, atoi(arg));
    else ok = 0;
    printf("%s\n", ok ? "ok" : "error"); fflush(stdout);
  }
  rd_kafka_mock_cluster_destroy(mc); rd_kafka_destroy(rk);
  return 0;
}

/*
 * edge_monitor_mic - Arduino (ATmega328P: Uno, Nano) microphone front end for edge-monitor.
 *
 * Samples an analog microphone module on A0 at 16 kHz (or 8 kHz) with a
 * timer-triggered ADC and streams the 10-bit samples to the gateway as framed
 * blocks over the USB serial port (500000 baud, 8N1). The gateway drives the
 * alarm outputs (LED on D8, relay on D7) with commands. The status LED (D13)
 * shows: slow blink = idle, steady = streaming, fast blink = alarm on.
 * Wire format: firmware/PROTOCOL.md. Framing, CRC and command handling are in
 * em_protocol.c (plain C, unit-tested on the host).
 */
#include "em_protocol.h"
#include "em_sampler.h"

#ifndef EM_BOARD_ID
#define EM_BOARD_ID "atmega328p"
#endif
#ifndef EM_BAUD
#define EM_BAUD 500000UL
#endif
#ifndef EM_RELAY_ACTIVE_LOW
#define EM_RELAY_ACTIVE_LOW 0 /* set to 1 for relay modules that switch on a LOW input */
#endif

static const uint8_t STATUS_LED_PIN = 13;
static const uint8_t ALARM_LED_PIN = 8;
static const uint8_t ALARM_RELAY_PIN = 7;
static const uint16_t DEFAULT_RATE_HZ = 16000;

static em_device_state_t g_state;
static em_cmd_decoder_t g_decoder;
static uint8_t g_boot_pending = 1;    /* the next frame carries EM_FLAG_BOOT */
static uint8_t g_restart_pending = 0; /* the next audio frame carries EM_FLAG_RESTART */
static uint16_t g_reply_seq = 0;

static uint8_t frame_flags(void)
{
    uint8_t flags = 0;
    if (g_state.streaming) {
        flags |= EM_FLAG_STREAMING;
    }
    if (g_state.alarm_on) {
        flags |= EM_FLAG_ALARM;
    }
    if (g_boot_pending) {
        flags |= EM_FLAG_BOOT;
        g_boot_pending = 0;
    }
    return flags;
}

static void apply_alarm(void)
{
    digitalWrite(ALARM_LED_PIN, g_state.alarm_on ? HIGH : LOW);
    digitalWrite(ALARM_RELAY_PIN, (g_state.alarm_on ^ EM_RELAY_ACTIVE_LOW) ? HIGH : LOW);
}

static void apply_sampling(void)
{
    if (g_state.restart_sampler) {
        g_state.restart_sampler = 0;
        em_sampler_start(g_state.sample_rate_hz);
        g_restart_pending = 1;
    } else if (!g_state.streaming) {
        em_sampler_stop();
    }
}

/* Stream one frame: header, then the payload straight from the sample block, then the CRC. */
static void send_audio(const volatile uint16_t *block, uint16_t seq, uint8_t overrun)
{
    uint8_t header[EM_FRAME_HEADER_BYTES];
    uint8_t flags = frame_flags();
    uint16_t crc;
    uint16_t i;
    if (overrun) {
        flags |= EM_FLAG_OVERRUN;
    }
    if (g_restart_pending) {
        flags |= EM_FLAG_RESTART;
        g_restart_pending = 0;
    }
    em_encode_header(header, EM_KIND_AUDIO, flags, seq, g_state.sample_rate_hz, EM_BLOCK_SAMPLES);
    crc = em_crc16(EM_CRC16_INIT, header + 2, EM_FRAME_HEADER_BYTES - 2);
    Serial.write(header, sizeof(header));
    for (i = 0; i < EM_BLOCK_SAMPLES; i++) {
        uint16_t code = block[i];
        uint8_t lo = (uint8_t)(code & 0xFFu);
        uint8_t hi = (uint8_t)(code >> 8);
        crc = em_crc16_update(crc, lo);
        crc = em_crc16_update(crc, hi);
        Serial.write(lo);
        Serial.write(hi);
    }
    Serial.write((uint8_t)(crc & 0xFFu));
    Serial.write((uint8_t)(crc >> 8));
}

static void send_reply(const uint8_t *payload, uint16_t len)
{
    uint8_t frame[EM_FRAME_HEADER_BYTES + EM_FRAME_MAX_REPLY_BYTES + EM_FRAME_CRC_BYTES];
    size_t n = em_encode_reply_frame(frame, sizeof(frame), frame_flags(), g_reply_seq++,
                                     g_state.sample_rate_hz, payload, len);
    Serial.write(frame, n);
}

static void handle_serial_input(void)
{
    em_command_t cmd;
    uint8_t reply[EM_FRAME_MAX_REPLY_BYTES];
    while (Serial.available() > 0) {
        if (!em_cmd_decoder_feed(&g_decoder, (uint8_t)Serial.read(), &cmd)) {
            continue;
        }
        size_t n = em_handle_command(&cmd, &g_state, EM_BOARD_ID, reply, sizeof(reply));
        apply_alarm();
        apply_sampling();
        send_reply(reply, (uint16_t)n);
    }
}

static void update_status_led(void)
{
    unsigned long now_ms = millis();
    uint8_t on;
    if (g_state.alarm_on) {
        on = (now_ms / 125u) & 1u; /* 4 Hz blink */
    } else if (g_state.streaming) {
        on = 1;
    } else {
        on = (now_ms % 1000u) < 100u; /* heartbeat */
    }
    digitalWrite(STATUS_LED_PIN, on ? HIGH : LOW);
}

void setup()
{
    pinMode(STATUS_LED_PIN, OUTPUT);
    pinMode(ALARM_LED_PIN, OUTPUT);
    pinMode(ALARM_RELAY_PIN, OUTPUT);
    g_state.alarm_on = 0;
    g_state.streaming = 1; /* stream from power-up, so a reset needs no gateway action */
    g_state.sample_rate_hz = DEFAULT_RATE_HZ;
    g_state.restart_sampler = 1;
    apply_alarm();
    em_cmd_decoder_init(&g_decoder);
    Serial.begin(EM_BAUD);
    apply_sampling();
}

void loop()
{
    uint16_t seq;
    uint8_t overrun;
    const volatile uint16_t *block;
    handle_serial_input();
    block = em_sampler_peek(&seq, &overrun);
    if (block != NULL) {
        send_audio(block, seq, overrun);
        em_sampler_release();
    }
    update_status_led();
}

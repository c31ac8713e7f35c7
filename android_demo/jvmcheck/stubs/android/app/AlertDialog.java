package android.app;
public class AlertDialog {
  public static class Builder {
    public Builder(android.content.Context c) {}
    public Builder setMessage(int id) { return this; }
    public Builder setPositiveButton(int id, android.content.DialogInterface.OnClickListener l) { return this; }
    public Builder setNegativeButton(int id, android.content.DialogInterface.OnClickListener l) { return this; }
    public AlertDialog show() { return null; }
  }
}
